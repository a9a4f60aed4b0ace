package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
)

func statsCmd(ctx context.Context, g *globals) *cobra.Command {
	var watch bool
	var every time.Duration
	var token string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show queue depth (the command queues' sum and each one), dead letters, mailboxes, timers and push servers (GET /v1/stats)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if token == "" {
				secret, err := g.secret()
				if err != nil {
					return err
				}
				if token, err = auth.Mint(secret, "devicesim-ops", auth.RoleOperator, nil, time.Hour); err != nil {
					return err
				}
			}
			api := NewAPI(g.API)
			for {
				var stats map[string]any
				if _, err := api.Do(ctx, http.MethodGet, "/v1/stats", token, nil, &stats); err != nil {
					return err
				}
				if watch {
					fmt.Fprint(g.stdout, "\033[H\033[2J")
					fmt.Fprintf(g.stdout, "%s  (every %s, Ctrl-C to stop)\n\n", time.Now().Format(time.TimeOnly), every)
				}
				if asJSON {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					if err := enc.Encode(stats); err != nil {
						return err
					}
				} else {
					writeTree(g.stdout, "", stats)
				}
				if !watch {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "refresh until interrupted")
	cmd.Flags().DurationVar(&every, "every", 2*time.Second, "refresh interval with --watch")
	cmd.Flags().StringVar(&token, "token", "", "operator token (default: minted with --secret)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// writeTree prints nested JSON as indented "key: value" lines, keys sorted.
// An element of a list that has a "name" (each command queue listed under
// queues.{ns}.commands, whose numbers are their sum) is headed by it.
func writeTree(w io.Writer, indent string, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			switch x[k].(type) {
			case map[string]any, []any:
				fmt.Fprintf(w, "%s%s:\n", indent, k)
				writeTree(w, indent+"  ", x[k])
			default:
				fmt.Fprintf(w, "%s%s: %v\n", indent, k, x[k])
			}
		}
	case []any:
		for i, e := range x {
			if m, ok := e.(map[string]any); ok {
				if name, ok := m["name"].(string); ok {
					fmt.Fprintf(w, "%s- %s\n", indent, name)
					rest := make(map[string]any, len(m))
					for k, v := range m {
						if k != "name" {
							rest[k] = v
						}
					}
					writeTree(w, indent+"  ", rest)
					continue
				}
			}
			fmt.Fprintf(w, "%s- [%d]\n", indent, i)
			writeTree(w, indent+"  ", e)
		}
	default:
		fmt.Fprintf(w, "%s%v\n", indent, strings.TrimSpace(fmt.Sprint(x)))
	}
}
