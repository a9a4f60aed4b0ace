package protocol

import "testing"

func TestTopicBuilders(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"DeviceCommandsTopic", DeviceCommandsTopic("dev-1"), "devices/dev-1/commands"},
		{"DeviceResponsesTopic", DeviceResponsesTopic("dev-1"), "devices/dev-1/responses"},
		{"ClientResultsTopic", ClientResultsTopic("app", "dev-1"), "clients/app/results/dev-1"},
		{"ClientResultsFilter", ClientResultsFilter("app"), "clients/app/results/+"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s(…) = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestParseTopic(t *testing.T) {
	tests := []struct {
		topic string
		want  Topic
		ok    bool
	}{
		{"devices/dev-1/commands", Topic{Kind: TopicDeviceCommands, Identity: "dev-1"}, true},
		{"devices/dev-1/responses", Topic{Kind: TopicDeviceResponse, Identity: "dev-1"}, true},
		{"clients/app/results/dev-1", Topic{Kind: TopicClientResults, Identity: "app", Device: "dev-1"}, true},
		{"devices/" + id128 + "/commands", Topic{Kind: TopicDeviceCommands, Identity: id128}, true},
		{"devices/" + id129 + "/commands", Topic{}, false},
		{"", Topic{}, false},
		{"/", Topic{}, false},
		{"devices", Topic{}, false},
		{"devices/dev-1", Topic{}, false},
		{"devices/dev-1/", Topic{}, false},
		{"devices//commands", Topic{}, false},
		{"devices/dev-1/commands/", Topic{}, false},
		{"/devices/dev-1/commands", Topic{}, false},
		{"devices/dev-1/commands/x", Topic{}, false},
		{"devices/dev-1/command", Topic{}, false},
		{"devices/dev-1/results", Topic{}, false},
		{"Devices/dev-1/commands", Topic{}, false},
		{"devices/+/commands", Topic{}, false},
		{"devices/#", Topic{}, false},
		{"devices/dev 1/commands", Topic{}, false},
		{"devices/a:b/commands", Topic{}, false},
		{"devices/-a/commands", Topic{}, false},
		{"devices/é/commands", Topic{}, false},
		{"clients/app/results", Topic{}, false},
		{"clients/app/results/", Topic{}, false},
		{"clients/app/results/+", Topic{}, false},
		{"clients/app/results/#", Topic{}, false},
		{"clients/+/results/dev-1", Topic{}, false},
		{"clients/app/result/dev-1", Topic{}, false},
		{"clients/app/results/dev-1/x", Topic{}, false},
		{"clients/app/commands", Topic{}, false},
		{"$SYS/broker/uptime", Topic{}, false},
		{"$share/g/devices/dev-1/commands", Topic{}, false},
	}
	for _, tt := range tests {
		got, err := ParseTopic(tt.topic)
		if (err == nil) != tt.ok || got != tt.want || (err != nil && err != ErrTopic) {
			t.Errorf("ParseTopic(%q) = %+v, %v, want %+v (ok %v)", tt.topic, got, err, tt.want, tt.ok)
		}
	}
}

func TestTopicRoundTrip(t *testing.T) {
	for _, id := range []string{"a", "dev-1", "x.y_z", id128} {
		for _, tt := range []struct {
			topic string
			want  Topic
		}{
			{DeviceCommandsTopic(id), Topic{Kind: TopicDeviceCommands, Identity: id}},
			{DeviceResponsesTopic(id), Topic{Kind: TopicDeviceResponse, Identity: id}},
			{ClientResultsTopic(id, "d"), Topic{Kind: TopicClientResults, Identity: id, Device: "d"}},
			{ClientResultsTopic("c", id), Topic{Kind: TopicClientResults, Identity: "c", Device: id}},
		} {
			if got, err := ParseTopic(tt.topic); err != nil || got != tt.want {
				t.Errorf("ParseTopic(%q) = %+v, %v, want %+v", tt.topic, got, err, tt.want)
			}
		}
	}
}

func TestMaySubscribe(t *testing.T) {
	tests := []struct {
		identity, filter string
		want             bool
	}{
		// Allowed: one's own topics.
		{"dev-1", "devices/dev-1/commands", true},
		{"app", "clients/app/results/+", true},
		{"app", "clients/app/results/dev-1", true},
		{"app", "clients/app/results/" + id128, true},
		{id128, "clients/" + id128 + "/results/+", true},

		// Wildcards outside the single trailing + of one's own results.
		{"app", "#", false},
		{"app", "+", false},
		{"app", "+/#", false},
		{"app", "+/+/+/+", false},
		{"app", "+/app/results/+", false},
		{"app", "clients/+/results/+", false},
		{"app", "clients/+/results/dev-1", false},
		{"app", "clients/app/#", false},
		{"app", "clients/app/results/#", false},
		{"app", "clients/app/+/+", false},
		{"app", "clients/app/+/dev-1", false},
		{"app", "clients/app/results/+/+", false},
		{"app", "clients/app/results/+/#", false},
		{"app", "clients/app/results/dev+", false},
		{"app", "clients/app/results/+dev", false},
		{"app", "clients/app/results/dev-#", false},
		{"dev-1", "devices/+/commands", false},
		{"dev-1", "devices/dev-1/+", false},
		{"dev-1", "devices/dev-1/#", false},
		{"dev-1", "devices/#", false},
		{"dev-1", "devices/+/responses", false},

		// Shared and system topics.
		{"app", "$share/g/clients/app/results/+", false},
		{"app", "$share/g/clients/app/results/dev-1", false},
		{"dev-1", "$share/g/devices/dev-1/commands", false},
		{"dev-1", "$queue/devices/dev-1/commands", false},
		{"app", "$SYS/#", false},
		{"app", "$SYS/broker/clients/connected", false},
		{"app", "$", false},

		// Someone else's topics.
		{"app", "clients/other/results/+", false},
		{"app", "clients/other/results/dev-1", false},
		{"app", "clients/ap/results/+", false},
		{"app", "clients/app2/results/+", false},
		{"dev-1", "devices/dev-2/commands", false},
		{"dev-1", "devices/dev-10/commands", false},
		{"app", "devices/dev-1/commands", false},

		// Topics one may only publish on, or nobody may use.
		{"dev-1", "devices/dev-1/responses", false},
		{"app", "clients/app/results", false},
		{"app", "clients/app/results/", false},
		{"app", "clients/app", false},
		{"app", "", false},
		{"app", "/clients/app/results/+", false},
		{"app", "clients/app/results/+/", false},
		{"dev-1", "devices/dev-1/commands/", false},
		{"dev-1", "Devices/dev-1/commands", false},

		// Invalid identities get nothing, even their "own" topics.
		{"", "devices//commands", false},
		{"", "clients//results/+", false},
		{"+", "devices/+/commands", false},
		{"+", "clients/+/results/+", false},
		{"#", "devices/#/commands", false},
		{"a/b", "devices/a/b/commands", false},
		{"a/results/x", "clients/a/results/x/results/+", false},
		{"a:b", "devices/a:b/commands", false},
		{id129, "devices/" + id129 + "/commands", false},
		{"$SYS", "devices/$SYS/commands", false},
	}
	for _, tt := range tests {
		if got := MaySubscribe(tt.identity, tt.filter); got != tt.want {
			t.Errorf("MaySubscribe(%q, %q) = %v, want %v", tt.identity, tt.filter, got, tt.want)
		}
	}
}

func TestMayPublish(t *testing.T) {
	tests := []struct {
		identity, topic string
		want            bool
	}{
		{"dev-1", "devices/dev-1/responses", true},
		{"dev-1", "devices/dev-1/commands", false},
		{"dev-1", "devices/dev-2/responses", false},
		{"dev-1", "devices/+/responses", false},
		{"dev-1", "devices/#", false},
		{"dev-1", "#", false},
		{"dev-1", "devices/dev-1/responses/x", false},
		{"dev-1", "$SYS/x", false},
		{"dev-1", "$share/g/devices/dev-1/responses", false},
		{"app", "clients/app/results/dev-1", false},
		{"app", "clients/app/results/+", false},
		{"app", "devices/app/commands", false},
		{"", "devices//responses", false},
		{"a/b", "devices/a/b/responses", false},
	}
	for _, tt := range tests {
		if got := MayPublish(tt.identity, tt.topic); got != tt.want {
			t.Errorf("MayPublish(%q, %q) = %v, want %v", tt.identity, tt.topic, got, tt.want)
		}
	}
}

func TestFilterMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"clients/app/results/+", "clients/app/results/dev-1", true},
		{"clients/app/results/+", "clients/app/results/" + id128, true},
		{"clients/app/results/dev-1", "clients/app/results/dev-1", true},
		{"devices/dev-1/commands", "devices/dev-1/commands", true},
		{"clients/app/results/dev-1", "clients/app/results/dev-2", false},
		{"clients/app/results/+", "clients/app/results/", false},
		{"clients/app/results/+", "clients/app/results", false},
		{"clients/app/results/+", "clients/app/results/a/b", false},
		{"clients/app/results/+", "clients/other/results/dev-1", false},
		{"clients/app/results/+", "clients/app/resultsx/dev-1", false},
		{"clients/app/results/+", "clients/ap/results/dev-1", false},
		{"clients/app/results/+", "clients/app/results/#", false},
		{"clients/app/results/+", "clients/app/results/a+", false},
		{"devices/dev-1/commands", "devices/dev-1/responses", false},
		{"devices/dev-1/commands", "devices/dev-10/commands", false},
	}
	for _, tt := range tests {
		if got := FilterMatches(tt.filter, tt.topic); got != tt.want {
			t.Errorf("FilterMatches(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
	// Every topic a client's allowed filters match is one of its own result topics.
	for _, f := range []string{ClientResultsFilter("app"), ClientResultsTopic("app", "d")} {
		if !MaySubscribe("app", f) {
			t.Fatalf("MaySubscribe(%q, %q) = false, want true", "app", f)
		}
		if !FilterMatches(f, ClientResultsTopic("app", "d")) {
			t.Errorf("FilterMatches(%q, %q) = false, want true", f, ClientResultsTopic("app", "d"))
		}
	}
}
