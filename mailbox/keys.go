package mailbox

// cmdKeys returns the partition of device and the keys of a step on the
// command (client, idKey) to device, in the order lib.lua's cmdkeys
// reads them: record, the device's mailbox, the partition's mailbox set,
// timers, dead set, outbox, counters of this minute, the device's session
// registration, the (client, device) listing, the device's lanes and the
// partition's queued set.
func (s *Store) cmdKeys(device, client, idKey string) (int, []string) {
	p := s.PartitionOf(device)
	pk := s.keys.Part(p)
	return p, []string{
		pk.Command(client, idKey), pk.Mailbox(device), pk.Mailboxes(), pk.Timers(), pk.Dead(),
		pk.Outbox(), pk.StatusCounts(s.now().Unix() / 60), pk.Session(device), pk.ClientCommands(client, device),
		pk.Lanes(device), pk.Queued(),
	}
}

// horizonMs is how long a listing member is kept at least: Retention +
// MaxLifetime + Lease.
func (s *Store) horizonMs() int64 {
	return (s.opts.Retention + s.opts.MaxLifetime + s.opts.Lease).Milliseconds()
}

// claimLifetimeMs is how long an open claim lives at least (DESIGN §7a:
// deliver-by + timeout + lease + 2 grace; the longest command's).
func (s *Store) claimLifetimeMs() int64 {
	return (s.opts.MaxLifetime + s.opts.Lease + 2*s.opts.AnswerGrace + s.opts.Retention).Milliseconds()
}
