package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
)

func tokenCmd(g *globals) *cobra.Command {
	var role, sub string
	var devices []string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint a token for a client, a device or an operator",
		Example: `  devicesim token --role client --sub app-1 --devices 'dev-*'
  devicesim token --role device --sub dev-1
  devicesim token --role operator --sub ops`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			secret, err := g.secret()
			if err != nil {
				return err
			}
			if role == string(auth.RoleClient) && len(devices) == 0 {
				return fmt.Errorf("a client token needs --devices globs, e.g. --devices 'dev-*'")
			}
			tok, err := auth.Mint(secret, sub, auth.Role(role), devices, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "client", "client, device or operator")
	cmd.Flags().StringVar(&sub, "sub", "app-1", "the identity")
	cmd.Flags().StringSliceVar(&devices, "devices", nil, "glob patterns of the devices a client may command")
	cmd.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime of the token")
	return cmd
}
