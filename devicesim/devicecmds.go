package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// The device's HTTP channel from the command line (issue 15's sleepy
// devices): poll is GET /v1/devices/{d}/commands/next, answer is POST
// /v1/devices/{d}/responses, both with a device token whose sub is the
// device.

// deviceCaller returns the device token and the device of a poll or an
// answer: --token (a device token; its sub is the device, and a --device
// given as well must match it), or one minted with the secret for --device.
func deviceCaller(cmd *cobra.Command, g *globals, token, device string) (string, string, error) {
	if token != "" {
		var cl auth.Claims
		if _, _, err := jwt.NewParser().ParseUnverified(token, &cl); err != nil {
			return "", "", usageError("--token is not a JWT: %v", err)
		}
		if cl.Role != auth.RoleDevice {
			return "", "", &apiFailure{Code: exitAuth, Err: fmt.Errorf("%s needs a device token; --token is a %s token of %q", cmd.Name(), cl.Role, cl.Subject)}
		}
		if device != "" && device != cl.Subject {
			return "", "", usageError("--device %q differs from the token's sub %q", device, cl.Subject)
		}
		return token, cl.Subject, nil
	}
	if device == "" {
		return "", "", usageError("give --device (or a device's --token)")
	}
	if !protocol.ValidIdentity(device) {
		return "", "", usageError("--device %q is not a valid device ID", device)
	}
	secret, err := g.secret()
	if err != nil {
		return "", "", usageError("%v", err)
	}
	tok, err := auth.Mint(secret, device, auth.RoleDevice, nil, time.Hour)
	if err != nil {
		return "", "", usageError("cannot mint a device token: %v", err)
	}
	return tok, device, nil
}

// devicePath is /v1/devices/{device}/{rest}.
func devicePath(device, rest string) string {
	return "/v1/devices/" + url.PathEscape(device) + "/" + rest
}

func pollCmd(ctx context.Context, g *globals) *cobra.Command {
	var token, device, acks string
	var wait time.Duration
	var max int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "poll --device <device> [--wait 30s] [--ack t1,t2]",
		Short: "Poll a device's commands over HTTP, as a sleepy device does (GET /v1/devices/{device}/commands/next; device token)",
		Long: `Fetch the commands waiting for a device that holds no MQTT session, each with
its ack token and the JSON-RPC request the device would get over MQTT (id
"{client}:{id}"). --wait long-polls until a command waits; --ack acknowledges
the commands of an earlier poll (delivered; a one-way command succeeds). A
fetched command is offered again after 30 s unless answered (devicesim answer)
or acknowledged. Exit status 0 also when no command waits; 3 while the device
holds an MQTT session (409). The token is --token (a device token), or one
minted for --device with --secret.` + exitHelp,
		Example: `  devicesim poll --device dev-1 --wait 30s
  devicesim poll --device dev-1 --ack 1733580000000-0 --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if max < 1 || max > 100 {
				return usageError("--max %d is not within 1 and 100", max)
			}
			if wait < 0 {
				return usageError("--wait must not be negative")
			}
			q := url.Values{}
			q.Set("max", strconv.Itoa(max))
			if wait > 0 {
				q.Set("wait", wait.String())
			}
			if acks != "" {
				list := strings.Split(acks, ",")
				for _, a := range list {
					if a == "" {
						return usageError("--ack %q has an empty token", acks)
					}
				}
				if len(list) > 100 {
					return usageError("--ack has %d tokens, at most 100", len(list))
				}
				q.Set("ack", acks)
			}
			tok, device, err := deviceCaller(cmd, g, token, device)
			if err != nil {
				return err
			}
			return show(ctx, g, asJSON, http.MethodGet, devicePath(device, "commands/next")+"?"+q.Encode(), tok,
				"poll the commands of device "+device, writePolled)
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "the device (default: the sub of --token)")
	f.StringVar(&token, "token", "", "device token (default: minted for --device with --secret or GW_AUTH_SECRET)")
	f.DurationVar(&wait, "wait", 0, "long-poll up to this until a command waits (0: answer at once)")
	f.IntVar(&max, "max", 10, "commands at most (1 to 100)")
	f.StringVar(&acks, "ack", "", "ack tokens of an earlier poll's commands, comma-separated")
	f.BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

// answerOutcome is the outcome of one posted response.
type answerOutcome struct {
	ID      json.RawMessage `json:"id"`
	Outcome string          `json:"outcome"`
	Error   string          `json:"error"`
}

// outcomeTaken reports whether an answer's outcome completed its command
// (the others changed nothing).
func outcomeTaken(outcome string) bool { return outcome == "succeeded" || outcome == "failed" }

func answerCmd(ctx context.Context, g *globals) *cobra.Command {
	var token, device, id, result, traceParent string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "answer --device <device> '<JSON-RPC response or batch>' | - | --id <id> --result <json>",
		Short: "Post a device's answer over HTTP (POST /v1/devices/{device}/responses; device token)",
		Long: `Post a device's JSON-RPC response (or a batch: a JSON array of up to 100),
with the id of the polled request ("{client}:{id}"): as the argument, from
stdin ("-"), or built from --id and --result. Prints each response's outcome.
Exit status 0 when every response completed its command (outcome succeeded
or failed); 3 when any changed nothing (late, duplicate, timeout, malformed,
unknown, other_device, not_sent: the error lists them); 1 for a body that is
not JSON (nothing is sent) or that the API refuses (400). --traceparent
(the polled command's, from poll --json) continues the command's trace. The
token is --token (a device token), or one minted for --device with --secret.` + exitHelp,
		Example: `  devicesim answer --device dev-1 '{"jsonrpc":"2.0","result":{"on":true},"id":"app-1:send-abc"}'
  devicesim answer --device dev-1 --id app-1:send-abc --result '{"on":true}'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body []byte
			switch {
			case len(args) == 1 && (id != "" || result != ""):
				return usageError("give either the response or --id and --result")
			case len(args) == 1 && args[0] == "-":
				raw, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 8<<20))
				if err != nil {
					return usageError("cannot read stdin: %v", err)
				}
				body = raw
			case len(args) == 1:
				body = []byte(args[0])
			case id == "" || result == "":
				return usageError("give the response, or --id and --result")
			default:
				if !json.Valid([]byte(result)) {
					return usageError("--result is not JSON")
				}
				var rid json.RawMessage
				if n, err := strconv.ParseInt(id, 10, 64); err == nil {
					rid = json.RawMessage(strconv.FormatInt(n, 10))
				} else {
					rid, _ = json.Marshal(id)
				}
				body, _ = json.Marshal(map[string]any{"jsonrpc": "2.0", "result": json.RawMessage(result), "id": rid})
			}
			if !json.Valid(body) {
				return usageError("the response is not JSON")
			}
			if traceParent != "" {
				if telemetry.TraceIDOf(traceParent) == "" {
					return usageError("--traceparent %q is not a W3C traceparent", traceParent)
				}
			}
			// With no --traceparent, the request starts a trace of its own.
			rctx := telemetry.ContextWithTraceParent(ctx, traceParent)
			tok, device, err := deviceCaller(cmd, g, token, device)
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := callBody(rctx, g, cliAPI(g.API), asJSON, http.MethodPost, devicePath(device, "responses"), tok,
				"post the answer of device "+device, body, &raw); err != nil {
				return err
			}
			var outs []answerOutcome
			if len(raw) > 0 && raw[0] == '[' {
				err = json.Unmarshal(raw, &outs)
			} else {
				outs = make([]answerOutcome, 1)
				err = json.Unmarshal(raw, &outs[0])
			}
			if err != nil {
				return fmt.Errorf("cannot decode the answer: %w", err)
			}
			if asJSON {
				err = writeJSON(g.stdout, raw)
			} else {
				tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tOUTCOME\tERROR")
				for _, o := range outs {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", idText(o.ID), o.Outcome, o.Error)
				}
				err = tw.Flush()
			}
			if err != nil {
				return err
			}
			var unused []string
			for _, o := range outs {
				if !outcomeTaken(o.Outcome) {
					unused = append(unused, fmt.Sprintf("%s %s", idText(o.ID), o.Outcome))
				}
			}
			if len(unused) > 0 {
				return &apiFailure{Code: exitConflict, Err: fmt.Errorf("%d of %d responses changed nothing: %s", len(unused), len(outs), strings.Join(unused, ", "))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "the device (default: the sub of --token)")
	f.StringVar(&token, "token", "", "device token (default: minted for --device with --secret or GW_AUTH_SECRET)")
	f.StringVar(&id, "id", "", `the polled request's id ("{client}:{id}"), with --result`)
	f.StringVar(&result, "result", "", "the JSON-RPC result (JSON), with --id")
	f.StringVar(&traceParent, "traceparent", "", "the polled command's traceparent (poll --json): the answer continues its trace")
	f.BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

// deviceView is the part of GET /v1/devices/{device} the human output shows.
type deviceView struct {
	Device     string `json:"device"`
	Online     bool   `json:"online"`
	Connection string `json:"connection"`
	Node       string `json:"node"`
	MQTTURL    string `json:"mqtt_url"`
	Pending    int    `json:"pending"`
	LastSeen   string `json:"last_seen"`
	LastPoll   string `json:"last_poll"`
	Lanes      []struct {
		Name       string          `json:"name"`
		Commands   int             `json:"commands"`
		Waiting    int             `json:"waiting"`
		HeadID     json.RawMessage `json:"head_id"`
		HeadStatus string          `json:"head_status"`
	} `json:"lanes"`
}

// writeDevice prints a device as "key: value" lines, then its lanes.
func writeDevice(w io.Writer, raw json.RawMessage) error {
	var d deviceView
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("cannot decode the device: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, kv := range [][2]string{
		{"device", d.Device}, {"online", fmt.Sprint(d.Online)}, {"connection", d.Connection},
		{"node", d.Node}, {"mqtt_url", d.MQTTURL}, {"pending", fmt.Sprint(d.Pending)},
		{"last_seen", d.LastSeen}, {"last_poll", d.LastPoll},
	} {
		if kv[1] != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
	}
	for _, l := range d.Lanes {
		head := ""
		if len(l.HeadID) > 0 {
			head = fmt.Sprintf(", head %s %s", idText(l.HeadID), l.HeadStatus)
		}
		fmt.Fprintf(tw, "lane %s:\t%d commands, %d waiting%s\n", l.Name, l.Commands, l.Waiting, head)
	}
	return tw.Flush()
}

func deviceCmd(ctx context.Context, g *globals) *cobra.Command {
	return showCmd(ctx, g, &cobra.Command{
		Use:   "device <device>",
		Short: "Show a device's connection, mailbox and lanes (GET /v1/devices/{device})",
		Long: `Show whether a device is online and how it connects (mqtt, http_poll, offline),
its push server, the messages waiting in its mailbox, when it was last seen
and its ordered lanes that hold commands not yet final.` + exitHelp,
		Example: `  devicesim device dev-1 --client app-1`,
		Args:    cobra.MatchAll(exactArgs(1), identityArg("device ID")),
	}, false, func(args []string, who caller) apiRequest {
		return apiRequest{http.MethodGet, "/v1/devices/" + url.PathEscape(args[0]) + who.query(nil), "get device " + args[0]}
	}, writeDevice)
}

// writePolled prints the commands of a device's poll as a table.
func writePolled(w io.Writer, raw json.RawMessage) error {
	var out struct {
		Commands []Polled `json:"commands"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("cannot decode the answer: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACK\tID\tMETHOD\tPARAMS")
	for _, p := range out.Commands {
		var r struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if err := json.Unmarshal(p.Request, &r); err != nil {
			return fmt.Errorf("cannot decode a command: %w", err)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Ack, idText(r.ID), r.Method, r.Params)
	}
	return tw.Flush()
}
