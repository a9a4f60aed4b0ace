package main

import (
	"testing"

	"github.com/iotgw/gateway/internal/auth"
)

func TestTopicAllowedByRole(t *testing.T) {
	tests := []struct {
		role     auth.Role
		identity string
		topic    string
		write    bool
		want     bool
	}{
		{auth.RoleDevice, "dev-1", "devices/dev-1/commands", false, true},
		{auth.RoleDevice, "dev-1", "devices/dev-1/responses", true, true},
		{auth.RoleDevice, "dev-1", "clients/dev-1/results/+", false, false},
		{auth.RoleDevice, "dev-1", "clients/dev-1/results/x", false, false},
		{auth.RoleClient, "app-1", "clients/app-1/results/+", false, true},
		{auth.RoleClient, "app-1", "clients/app-1/results/dev-1", false, true},
		{auth.RoleClient, "dev-1", "devices/dev-1/commands", false, false},
		{auth.RoleClient, "dev-1", "devices/dev-1/responses", true, false},
		{auth.RoleClient, "app-1", "clients/app-2/results/+", false, false},
		{auth.RoleClient, "app-1", "clients/app-1/results/#", false, false},
		{auth.RoleOperator, "ops", "clients/ops/results/+", false, false},
		{auth.RoleDevice, "dev-1", "devices/dev-1/commands", true, false},
		{auth.RoleDevice, "dev-1", "#", false, false},
	}
	for _, tt := range tests {
		if got := topicAllowed(tt.role, tt.identity, tt.topic, tt.write); got != tt.want {
			t.Errorf("topicAllowed(%s, %q, %q, write=%v) = %v, want %v", tt.role, tt.identity, tt.topic, tt.write, got, tt.want)
		}
	}
}
