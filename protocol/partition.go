package protocol

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
)

// Partitions (DESIGN §7). The gateway's state is split into a fixed
// number of partitions, a power of two chosen once per deployment (like
// Temporal's numHistoryShards). Every Redis key of partition p carries the
// hash tag "{ns:p}", so a partition is one Redis Cluster slot and every
// atomic step, which touches one partition, runs unchanged on a Cluster.
//
//   - Partition(device) holds the device's command records, mailbox,
//     listing, timers, dead set, outbox and counters.
//   - Partition(client) holds the client's id claims and results mailbox.
//   - Partition(identity) holds the identity's session registration.
//
// A command to device d goes to the command queue Partition(d) mod
// GW_QUEUES (Topology.CommandQueueOf).

// DefaultPartitions is GW_PARTITIONS when it is not set: enough for a
// Redis Cluster of dozens of primaries and a million devices (about 4,000
// devices a partition), few enough that a per-partition sweep stays cheap.
const DefaultPartitions = 256

// MaxPartitions bounds GW_PARTITIONS (a Redis Cluster has 16,384 slots).
const MaxPartitions = 16384

// DefaultQueues is GW_QUEUES when it is not set.
const DefaultQueues = 4

// MaxQueues bounds GW_QUEUES.
const MaxQueues = 256

// ErrPartitions is returned by CheckPartitions for a count that is not a
// power of two within bounds.
var ErrPartitions = errors.New("protocol: the partition count must be a power of two from 1 to 16384")

// CheckPartitions returns an error unless n is a valid partition count.
func CheckPartitions(n int) error {
	if n < 1 || n > MaxPartitions || bits.OnesCount(uint(n)) != 1 {
		return fmt.Errorf("%w (got %d)", ErrPartitions, n)
	}
	return nil
}

// CheckQueues returns an error unless n is a valid command queue count.
func CheckQueues(n int) error {
	if n < 1 || n > MaxQueues {
		return fmt.Errorf("protocol: the command queue count must be from 1 to %d (got %d)", MaxQueues, n)
	}
	return nil
}

// Partition returns the partition of identity among n partitions (a
// power of two, see CheckPartitions): xxhash64 of the identity, seed 0,
// modulo n.
func Partition(identity string, n int) int {
	return int(XXH64(identity) & uint64(n-1))
}

// Tag is the hash tag of partition p of namespace ns: "{ns:p}".
func Tag(ns string, p int) string { return "{" + ns + ":" + strconv.Itoa(p) + "}" }

// XXH64 is the 64-bit xxHash of s with seed 0 (the same value as
// github.com/cespare/xxhash/v2's Sum64String), written out here so that
// the protocol package needs only the standard library.
func XXH64(s string) uint64 {
	const (
		p1 uint64 = 11400714785074694791
		p2 uint64 = 14029467366897019727
		p3 uint64 = 1609587929392839161
		p4 uint64 = 9650029242287828579
		p5 uint64 = 2870177450012600261
	)
	round := func(acc, in uint64) uint64 {
		acc += in * p2
		acc = bits.RotateLeft64(acc, 31)
		return acc * p1
	}
	merge := func(acc, v uint64) uint64 {
		acc ^= round(0, v)
		return acc*p1 + p4
	}
	u64 := func(b string) uint64 {
		return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
	}
	u32 := func(b string) uint64 {
		return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24
	}
	n := len(s)
	var h uint64
	if n >= 32 {
		prime1 := p1
		v1, v2, v3, v4 := prime1+p2, p2, uint64(0), -prime1
		for len(s) >= 32 {
			v1 = round(v1, u64(s[0:8]))
			v2 = round(v2, u64(s[8:16]))
			v3 = round(v3, u64(s[16:24]))
			v4 = round(v4, u64(s[24:32]))
			s = s[32:]
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = merge(h, v1)
		h = merge(h, v2)
		h = merge(h, v3)
		h = merge(h, v4)
	} else {
		h = p5
	}
	h += uint64(n)
	for ; len(s) >= 8; s = s[8:] {
		h ^= round(0, u64(s[:8]))
		h = bits.RotateLeft64(h, 27)*p1 + p4
	}
	if len(s) >= 4 {
		h ^= u32(s[:4]) * p1
		h = bits.RotateLeft64(h, 23)*p2 + p3
		s = s[4:]
	}
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i]) * p5
		h = bits.RotateLeft64(h, 11) * p1
	}
	h ^= h >> 33
	h *= p2
	h ^= h >> 29
	h *= p3
	h ^= h >> 32
	return h
}
