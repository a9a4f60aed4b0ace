package protocol

import (
	"errors"
	"strings"
)

// TopicKind says which of the gateway's MQTT topics a topic is.
type TopicKind int

// The MQTT topics of DESIGN §5.
const (
	TopicInvalid        TopicKind = iota
	TopicDeviceCommands           // devices/{d}/commands: a device receives requests
	TopicDeviceResponse           // devices/{d}/responses: a device publishes responses
	TopicClientResults            // clients/{c}/results/{d}: a client receives results
)

// Topic is a parsed gateway topic.
type Topic struct {
	Kind     TopicKind
	Identity string // the device of devices/…, the client of clients/…
	Device   string // for TopicClientResults: the device the result is from
}

// ErrTopic is returned for a topic that is not one of the gateway's.
var ErrTopic = errors.New("protocol: not a gateway topic")

// DeviceCommandsTopic is where device d receives its commands.
func DeviceCommandsTopic(d string) string { return "devices/" + d + "/commands" }

// DeviceResponsesTopic is where device d publishes its responses.
func DeviceResponsesTopic(d string) string { return "devices/" + d + "/responses" }

// ClientResultsTopic is where client c receives the results of device d.
func ClientResultsTopic(c, d string) string { return "clients/" + c + "/results/" + d }

// ClientResultsFilter is the filter of all of client c's results.
func ClientResultsFilter(c string) string { return "clients/" + c + "/results/+" }

// ParseTopic parses a concrete topic name (no wildcards) of the gateway.
func ParseTopic(topic string) (Topic, error) {
	parts := strings.Split(topic, "/")
	switch {
	case len(parts) == 3 && parts[0] == "devices" && ValidIdentity(parts[1]):
		switch parts[2] {
		case "commands":
			return Topic{Kind: TopicDeviceCommands, Identity: parts[1]}, nil
		case "responses":
			return Topic{Kind: TopicDeviceResponse, Identity: parts[1]}, nil
		}
	case len(parts) == 4 && parts[0] == "clients" && parts[2] == "results" &&
		ValidIdentity(parts[1]) && ValidIdentity(parts[3]):
		return Topic{Kind: TopicClientResults, Identity: parts[1], Device: parts[3]}, nil
	}
	return Topic{}, ErrTopic
}

// MayPublish reports whether identity may publish on topic: a device on
// its own responses topic, nobody else on anything.
func MayPublish(identity, topic string) bool {
	t, err := ParseTopic(topic)
	return err == nil && t.Kind == TopicDeviceResponse && t.Identity == identity
}

// MaySubscribe reports whether identity may subscribe to filter: a device
// to its own commands topic; a client to its own results, either one
// device's or all of them with a single trailing "+". Every other filter,
// including "#", "$share/…" and "$SYS/…", is refused.
func MaySubscribe(identity, filter string) bool {
	if strings.HasPrefix(filter, "$") {
		return false
	}
	if filter == DeviceCommandsTopic(identity) {
		return ValidIdentity(identity)
	}
	if filter == ClientResultsFilter(identity) {
		return ValidIdentity(identity)
	}
	t, err := ParseTopic(filter)
	return err == nil && t.Kind == TopicClientResults && t.Identity == identity
}

// FilterMatches reports whether a subscription filter (one of those that
// MaySubscribe allows) matches a topic name.
func FilterMatches(filter, topic string) bool {
	if filter == topic {
		return true
	}
	if strings.HasSuffix(filter, "/+") {
		prefix := filter[:len(filter)-1]
		rest, ok := strings.CutPrefix(topic, prefix)
		return ok && rest != "" && !strings.ContainsAny(rest, "/+#")
	}
	return false
}
