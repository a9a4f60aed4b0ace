package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/protocol"
)

// The API commands of the endpoints added with group commands and retries
// (issue 14): device groups (group put|get|delete), group commands
// (group-command get|wait|cancel|list) and retry. Same conventions as
// apicmds.go: --json prints the API's JSON, the exit statuses of exitHelp.

// groupPath is /v1/groups/{name}.
func groupPath(name string) string { return "/v1/groups/" + url.PathEscape(name) }

// groupCommandPath is /v1/group-commands/{id}.
func groupCommandPath(id string) string { return "/v1/group-commands/" + url.PathEscape(id) }

// parseDeviceList reads device IDs separated by commas, spaces or line
// breaks; a line's text from "#" on is a comment. Every ID must be valid
// and appear once.
func parseDeviceList(text string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for n, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, d := range strings.FieldsFunc(line, func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\r'
		}) {
			if !protocol.ValidIdentity(d) {
				return nil, fmt.Errorf("line %d: %q is not a valid device ID", n+1, d)
			}
			if seen[d] {
				return nil, fmt.Errorf("line %d: device %q is listed twice", n+1, d)
			}
			seen[d] = true
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no device IDs")
	}
	if len(out) > protocol.MaxGroupDevices {
		return nil, fmt.Errorf("%d device IDs, at most %d", len(out), protocol.MaxGroupDevices)
	}
	return out, nil
}

// deviceGroupView is the part of a device group the human output shows.
type deviceGroupView struct {
	Name      string   `json:"name"`
	Devices   []string `json:"devices"`
	UpdatedAt string   `json:"updated_at"`
}

// writeDeviceGroup prints a group's name, size and update time, then its
// devices one a line.
func writeDeviceGroup(w io.Writer, raw json.RawMessage) error {
	var dg deviceGroupView
	if err := json.Unmarshal(raw, &dg); err != nil {
		return fmt.Errorf("cannot decode the group: %w", err)
	}
	fmt.Fprintf(w, "name:       %s\ndevices:    %d\nupdated_at: %s\n", dg.Name, len(dg.Devices), dg.UpdatedAt)
	for _, d := range dg.Devices {
		fmt.Fprintf(w, "  %s\n", d)
	}
	return nil
}

func groupCmd(ctx context.Context, g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Named device groups: put, get, delete (/v1/groups/{name}; operator token)",
		Long: `Named device groups, the target of a group command's "group" (send --group).
Every subcommand needs an operator token: --token, or one minted for
--operator with --secret.` + exitHelp,
		Args: exactArgs(0),
	}
	cmd.AddCommand(groupPutCmd(ctx, g), groupGetCmd(ctx, g), groupDeleteCmd(ctx, g))
	return cmd
}

func groupPutCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var devices, file string
	cmd := &cobra.Command{
		Use:   "put <name> --devices a,b,… | --file <path|->",
		Short: "Create or replace a named device group (PUT /v1/groups/{name})",
		Long: `Create or replace a named device group with the devices of --devices
(comma-separated) or of --file (IDs separated by commas, spaces or lines;
"#" starts a comment; "-" reads stdin). 1 to 10,000 devices, each once.` + exitHelp,
		Example: `  devicesim group put valves --devices valve-1,valve-2
  cut -f1 fleet.tsv | devicesim group put fleet --file -`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !protocol.ValidIdentity(name) {
				return usageError("%q is not a valid group name", name)
			}
			if (devices == "") == (file == "") {
				return usageError("give either --devices or --file")
			}
			text, src := devices, "--devices"
			if file != "" {
				var raw []byte
				var err error
				if file == "-" {
					raw, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4<<20))
				} else {
					raw, err = os.ReadFile(file)
				}
				if err != nil {
					return usageError("cannot read --file: %v", err)
				}
				text, src = string(raw), "--file "+file
			}
			list, err := parseDeviceList(text)
			if err != nil {
				return usageError("%s: %v", src, err)
			}
			who, err := af.resolve(cmd, g, true)
			if err != nil {
				return err
			}
			body, err := json.Marshal(map[string]any{"devices": list})
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := callBody(ctx, g, cliAPI(g.API), asJSON, http.MethodPut, groupPath(name), who.token,
				"put device group "+name, body, &raw); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(g.stdout, raw)
			}
			return writeDeviceGroup(g.stdout, raw)
		},
	}
	af.register(cmd, true)
	cmd.Flags().StringVar(&devices, "devices", "", "the group's device IDs, comma-separated")
	cmd.Flags().StringVar(&file, "file", "", `a file of device IDs ("-": stdin)`)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

func groupGetCmd(ctx context.Context, g *globals) *cobra.Command {
	return showCmd(ctx, g, &cobra.Command{
		Use:     "get <name>",
		Short:   "Show a named device group (GET /v1/groups/{name})",
		Long:    "Show a named device group: its update time and devices." + exitHelp,
		Example: `  devicesim group get valves --json`,
		Args:    cobra.MatchAll(exactArgs(1), identityArg("group name")),
	}, true, func(args []string, who caller) apiRequest {
		return apiRequest{http.MethodGet, groupPath(args[0]), "get device group " + args[0]}
	}, writeDeviceGroup)
}

func groupDeleteCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "delete <name>",
		Short: "Delete a named device group (DELETE /v1/groups/{name})",
		Long: `Delete a named device group; group commands sent to it keep their devices.
The API answers 204 without a body: --json prints {"name":…,"deleted":true}.` + exitHelp,
		Example: `  devicesim group delete valves`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !protocol.ValidIdentity(args[0]) {
				return usageError("%q is not a valid group name", args[0])
			}
			who, err := af.resolve(cmd, g, true)
			if err != nil {
				return err
			}
			if err := call(ctx, g, cliAPI(g.API), asJSON, http.MethodDelete, groupPath(args[0]), who.token,
				"delete device group "+args[0], nil); err != nil {
				return err
			}
			if asJSON {
				raw, _ := json.Marshal(map[string]any{"name": args[0], "deleted": true})
				return writeJSON(g.stdout, raw)
			}
			fmt.Fprintf(g.stdout, "deleted device group %s\n", args[0])
			return nil
		},
	}
	af.register(cmd, true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

// groupCommandView is the part of a group command the human output shows.
type groupCommandView struct {
	ID         json.RawMessage `json:"id"`
	Client     string          `json:"client"`
	Status     string          `json:"status"`
	Done       bool            `json:"done"`
	Method     string          `json:"method"`
	Group      string          `json:"group"`
	Total      int             `json:"total"`
	Released   int             `json:"released"`
	Final      int             `json:"final"`
	InFlight   int             `json:"in_flight"`
	Failures   int             `json:"failures"`
	Counts     map[string]int  `json:"counts"`
	StopReason string          `json:"stop_reason"`
	CreatedAt  string          `json:"created_at"`
}

// countsText is "succeeded 3, timeout 1" in key order ("" for none).
func countsText(counts map[string]int) string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, counts[k])
	}
	return strings.Join(parts, ", ")
}

// writeGroupCommand prints a group command as "key: value" lines.
func writeGroupCommand(w io.Writer, raw json.RawMessage) error {
	var c groupCommandView
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("cannot decode the group command: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, kv := range [][2]string{
		{"id", idText(c.ID)}, {"client", c.Client}, {"method", c.Method}, {"group", c.Group},
		{"status", c.Status}, {"done", fmt.Sprint(c.Done)}, {"total", fmt.Sprint(c.Total)},
		{"released", fmt.Sprint(c.Released)}, {"final", fmt.Sprint(c.Final)},
		{"in_flight", fmt.Sprint(c.InFlight)}, {"failures", fmt.Sprint(c.Failures)},
		{"counts", countsText(c.Counts)}, {"stop_reason", c.StopReason}, {"created_at", c.CreatedAt},
	} {
		if kv[1] != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
	}
	return tw.Flush()
}

func groupCommandCmd(ctx context.Context, g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group-command",
		Short: "Group commands: get, wait, cancel, list (/v1/group-commands)",
		Long: `A group command's aggregate view (its children's counts per final status),
long-polled until done, cancelled, or the newest of every client (operators).
A child is an ordinary command with the id "{id}:{device}": get, wait, cancel
and retry take it.` + exitHelp,
		Args: exactArgs(0),
	}
	cmd.AddCommand(groupCommandGetCmd(ctx, g), groupCommandWaitCmd(ctx, g), groupCommandCancelCmd(ctx, g), groupCommandListCmd(ctx, g))
	return cmd
}

func groupCommandGetCmd(ctx context.Context, g *globals) *cobra.Command {
	return showCmd(ctx, g, &cobra.Command{
		Use:     "get <id>",
		Short:   "Show a group command's progress (GET /v1/group-commands/{id})",
		Long:    "Show one of the client's group commands and its children's counts." + exitHelp,
		Example: `  devicesim group-command get grp-1 --client app-1`,
		Args:    exactArgs(1),
	}, false, func(args []string, who caller) apiRequest {
		return apiRequest{http.MethodGet, groupCommandPath(args[0]) + who.query(nil), fmt.Sprintf("get group command %s of client %s", args[0], who.client)}
	}, writeGroupCommand)
}

func groupCommandWaitCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait <id>",
		Short: "Wait until every child of a group command is final (GET /v1/group-commands/{id}?wait=)",
		Long: `Long-poll the group command (at most 60 s a request) until every child is
final or --timeout passes, then print it.
` + exitHelp + `
For group-command wait: 0 every child succeeded; 6 every child is final and
some did not succeed (or the group was aborted or cancelled); 7 --timeout
passed first (the last view is printed).`,
		Example: `  devicesim group-command wait grp-1 --client app-1 --timeout 10m`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return usageError("--timeout must be positive")
			}
			who, err := af.resolve(cmd, g, false)
			if err != nil {
				return err
			}
			api := cliAPI(g.API)
			what := fmt.Sprintf("wait for group command %s of client %s", args[0], who.client)
			deadline := time.Now().Add(timeout)
			for {
				q := url.Values{}
				if left := time.Until(deadline); left > 0 {
					q.Set("wait", min(left, 60*time.Second).Round(time.Millisecond).String())
				}
				var raw json.RawMessage
				if err := call(ctx, g, api, asJSON, http.MethodGet, groupCommandPath(args[0])+who.query(q), who.token, what, &raw); err != nil {
					return err
				}
				var c groupCommandView
				if err := json.Unmarshal(raw, &c); err != nil {
					return fmt.Errorf("cannot decode the group command: %w", err)
				}
				if c.Done || time.Until(deadline) <= 0 {
					if asJSON {
						err = writeJSON(g.stdout, raw)
					} else {
						err = writeGroupCommand(g.stdout, raw)
					}
					if err != nil {
						return err
					}
					switch {
					case c.Done && c.Counts[string(protocol.StatusSucceeded)] == c.Total:
						return nil
					case c.Done:
						return &apiFailure{Code: exitNotSucceded, Err: fmt.Errorf("group command %s ended %s: %d of %d children succeeded (%s)",
							args[0], c.Status, c.Counts[string(protocol.StatusSucceeded)], c.Total, countsText(c.Counts))}
					}
					return &apiFailure{Code: exitWaitTimeout, Err: fmt.Errorf("group command %s is still %s after %s: %d of %d children final",
						args[0], c.Status, timeout, c.Final, c.Total)}
				}
				if ctx.Err() != nil {
					return classify(api.Base, what, ctx.Err())
				}
			}
		},
	}
	af.register(cmd, false)
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait in all")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

func groupCommandCancelCmd(ctx context.Context, g *globals) *cobra.Command {
	return showCmd(ctx, g, &cobra.Command{
		Use:   "cancel <id>",
		Short: "Cancel a group command (DELETE /v1/group-commands/{id})",
		Long: `Stop releasing the group's children and cancel every child not yet on the
wire; children on the wire end as they would. Exit status 3 when every child
was final already.` + exitHelp,
		Example: `  devicesim group-command cancel grp-1 --client app-1`,
		Args:    exactArgs(1),
	}, false, func(args []string, who caller) apiRequest {
		return apiRequest{http.MethodDelete, groupCommandPath(args[0]) + who.query(nil), fmt.Sprintf("cancel group command %s of client %s", args[0], who.client)}
	}, writeGroupCommand)
}

func groupCommandListCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the newest group commands of every client (GET /v1/group-commands; operator token)",
		Long: `List the newest group commands of every client, newest first. Needs an
operator token: --token, or one minted for --operator with --secret.` + exitHelp,
		Example: `  devicesim group-command list --limit 5`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > 100 {
				return usageError("--limit %d is not within 1 and 100", limit)
			}
			who, err := af.resolve(cmd, g, true)
			if err != nil {
				return err
			}
			return show(ctx, g, asJSON, http.MethodGet, fmt.Sprintf("/v1/group-commands?limit=%d", limit), who.token,
				"list group commands", writeGroupCommandList)
		},
	}
	af.register(cmd, true)
	cmd.Flags().IntVar(&limit, "limit", 20, "group commands to show (1 to 100)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

func retryCmd(ctx context.Context, g *globals) *cobra.Command {
	return showCmd(ctx, g, &cobra.Command{
		Use:   "retry <id>",
		Short: "Send a command that ended failed, timeout, expired or rejected once more (POST /v1/commands/{id}/retry)",
		Long: `Queue the command again under the same id with a fresh expires_in window; the
client gets a second final result for it. Exit status 3 when the command is
in another status (the error names it).` + exitHelp,
		Example: `  devicesim retry send-abc --client app-1
  devicesim wait send-abc --client app-1`,
		Args: exactArgs(1),
	}, false, func(args []string, who caller) apiRequest {
		return apiRequest{http.MethodPost, commandPath(args[0]) + "/retry" + who.query(nil), fmt.Sprintf("retry command %s of client %s", args[0], who.client)}
	}, writeCommand)
}

// writeGroupCommandList prints a page of group commands as a table.
func writeGroupCommandList(w io.Writer, raw json.RawMessage) error {
	var l struct {
		Groups []groupCommandView `json:"groups"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return fmt.Errorf("cannot decode the answer: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCLIENT\tMETHOD\tSTATUS\tTOTAL\tFINAL\tFAILURES\tCREATED")
	for _, c := range l.Groups {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", idText(c.ID), c.Client, c.Method, c.Status, c.Total, c.Final, c.Failures, c.CreatedAt)
	}
	return tw.Flush()
}
