package main

import (
	"strconv"

	"github.com/mochi-mqtt/server/v2/packets"
)

// packetSummary names a packet without its content: its type and packet
// ID.
func packetSummary(pk *packets.Packet) string {
	if pk == nil {
		return "nil"
	}
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = "type " + strconv.Itoa(int(pk.FixedHeader.Type))
	}
	if pk.PacketID != 0 {
		name += " id " + strconv.Itoa(int(pk.PacketID))
	}
	return name
}
