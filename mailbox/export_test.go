package mailbox

import "context"

// ScriptTransitions exposes the transitions the scripts make.
var ScriptTransitions = scriptTransitions

// LuaSources returns the source of every script.
func LuaSources() []string { return luaSources }

// LuaKeys returns the key names and topics the Lua helpers build.
func LuaKeys(ctx context.Context, s *Store, client, key, device, identity, node string, minute int64) ([]string, error) {
	v, err := s.run(ctx, keysScript, "", client, key, device, identity, node, minute)
	if err != nil {
		return nil, err
	}
	a, _ := v.([]any)
	out := make([]string, len(a))
	for i, x := range a {
		out[i], _ = x.(string)
	}
	return out, nil
}
