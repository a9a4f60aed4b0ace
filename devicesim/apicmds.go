package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// Exit statuses of the API commands (get, list, cancel, wait, dead,
// replay, connect, and those of groupcmds.go and devicecmds.go). send
// keeps its own (see its help).
const (
	exitOK          = 0
	exitUsage       = 1 // usage or bad input, and anything else
	exitNotFound    = 2 // 404
	exitConflict    = 3 // 409: e.g. cancel too late, replay of a command that is not dead
	exitUnavailable = 4 // the API is unreachable, answered 5xx, or 429
	exitAuth        = 5 // 401 or 403
	exitNotSucceded = 6 // wait: the command ended with a final status other than succeeded
	exitWaitTimeout = 7 // wait: --timeout passed before the command was final
)

// exitHelp is the exit status table every API command's help ends with.
const exitHelp = `
Exit status: 0 ok; 1 usage, bad input or interrupted; 2 not found (404);
3 conflict (409, e.g. cancel too late); 4 the API is unreachable, did not
answer in time, answered 5xx or 429;
5 authentication or authorization failed (401, 403).`

// apiFailure is an error with the exit status it carries; main prints the
// message and exits with Code.
type apiFailure struct {
	Code int
	Err  error
}

func (e *apiFailure) Error() string { return e.Err.Error() }
func (e *apiFailure) Unwrap() error { return e.Err }

// exitStatus is the exit status of a run error: an apiFailure's code, an
// exitCode's value, 0 for nil, else 1.
func exitStatus(err error) int {
	var af *apiFailure
	var ec exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &af):
		return af.Code
	case errors.As(err, &ec):
		return int(ec)
	}
	return exitUsage
}

// usageError is a failure before anything was sent (exit status 1).
func usageError(format string, args ...any) error {
	return &apiFailure{Code: exitUsage, Err: fmt.Errorf(format, args...)}
}

// classify turns the error of an API call into an apiFailure whose
// message says what was tried (what) and why it failed.
func classify(base, what string, err error) error {
	var ae *APIError
	if errors.As(err, &ae) {
		code := exitUsage
		switch {
		case ae.Status == http.StatusNotFound:
			code = exitNotFound
		case ae.Status == http.StatusConflict:
			code = exitConflict
		case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
			code = exitAuth
		case ae.Status >= 500 || ae.Status == http.StatusTooManyRequests:
			code = exitUnavailable
		}
		return &apiFailure{Code: code, Err: fmt.Errorf("cannot %s: %w", what, err)}
	}
	if errors.Is(err, context.Canceled) {
		return &apiFailure{Code: exitUsage, Err: fmt.Errorf("cannot %s: interrupted: %w", what, err)}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &apiFailure{Code: exitUnavailable, Err: fmt.Errorf("cannot %s: the API at %s did not answer in time: %w", what, base, err)}
	}
	var ue *url.Error
	if errors.As(err, &ne) || errors.As(err, &ue) {
		return &apiFailure{Code: exitUnavailable, Err: fmt.Errorf("cannot %s: the API at %s is unreachable: %w", what, base, err)}
	}
	return &apiFailure{Code: exitUsage, Err: fmt.Errorf("cannot %s: %w", what, err)}
}

// cliAPI is the HTTP client of the API commands: a connection that cannot
// be made fails within 1.5 s, so an unreachable API is reported quickly.
func cliAPI(base string) *API {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 1500 * time.Millisecond}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	// The longest request is a 60 s long-poll.
	return &API{Base: strings.TrimRight(base, "/"), HTTP: &http.Client{Transport: tr, Timeout: 75 * time.Second}}
}

// authFlags are the flags that say who calls the API.
type authFlags struct {
	token    string
	client   string
	operator string
}

func (a *authFlags) register(cmd *cobra.Command, operatorOnly bool) {
	f := cmd.Flags()
	f.StringVar(&a.token, "token", "", "bearer token (default: minted with --secret or GW_AUTH_SECRET)")
	if operatorOnly {
		f.StringVar(&a.operator, "operator", "devicesim-ops", "operator identity of the minted token")
		return
	}
	f.StringVar(&a.client, "client", "cli-1", "client identity (with --token: must be the token's sub, or any client for an operator token)")
	f.StringVar(&a.operator, "operator", "", "mint an operator token for this identity and act on --client's commands")
}

// caller is who a request is made as.
type caller struct {
	token string
	// client is the client whose commands are read or changed.
	client string
	// onBehalf: the token is an operator's, client goes in ?client=.
	onBehalf bool
}

// resolve returns the token to send. With --token, the identity is the
// token's sub: a --client given as well must match it unless the token is
// an operator's (then --client names the client to act for). Without it,
// a token is minted with the secret: an operator token when operator is
// set, else a client token for --client.
func (a *authFlags) resolve(cmd *cobra.Command, g *globals, operatorOnly bool) (caller, error) {
	// Operator-only commands have no --client of the caller (replay's
	// --client names the command's client).
	clientSet := !operatorOnly && cmd.Flags().Changed("client")
	if a.token != "" {
		var cl auth.Claims
		if _, _, err := jwt.NewParser().ParseUnverified(a.token, &cl); err != nil {
			return caller{}, usageError("--token is not a JWT: %v", err)
		}
		if cl.Role == auth.RoleOperator {
			if !clientSet {
				return caller{token: a.token, client: cl.Subject}, nil
			}
			return caller{token: a.token, client: a.client, onBehalf: true}, nil
		}
		if operatorOnly {
			return caller{}, &apiFailure{Code: exitAuth, Err: fmt.Errorf("%s needs an operator token; --token is a %s token of %q", cmd.Name(), cl.Role, cl.Subject)}
		}
		if clientSet && a.client != cl.Subject {
			return caller{}, usageError("--client %q differs from the token's sub %q", a.client, cl.Subject)
		}
		return caller{token: a.token, client: cl.Subject}, nil
	}
	secret, err := g.secret()
	if err != nil {
		return caller{}, usageError("%v", err)
	}
	if operatorOnly || a.operator != "" {
		tok, err := auth.Mint(secret, a.operator, auth.RoleOperator, nil, time.Hour)
		if err != nil {
			return caller{}, usageError("cannot mint an operator token: %v", err)
		}
		if !clientSet {
			return caller{token: tok, client: a.operator}, nil
		}
		return caller{token: tok, client: a.client, onBehalf: true}, nil
	}
	if !protocol.ValidIdentity(a.client) {
		return caller{}, usageError("--client %q is not a valid identity", a.client)
	}
	// The secret's holder may command anything: the token covers every device.
	tok, err := auth.Mint(secret, a.client, auth.RoleClient, []string{"*"}, time.Hour)
	if err != nil {
		return caller{}, usageError("cannot mint a client token: %v", err)
	}
	return caller{token: tok, client: a.client}, nil
}

// query returns ?client= for an operator acting for a client, merged with extra.
func (c caller) query(extra url.Values) string {
	q := url.Values{}
	for k, v := range extra {
		q[k] = v
	}
	if c.onBehalf {
		q.Set("client", c.client)
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// commandView is the part of a command the human output shows.
type commandView struct {
	ID          json.RawMessage `json:"id"`
	Client      string          `json:"client"`
	Device      string          `json:"device"`
	Method      string          `json:"method"`
	Status      string          `json:"status"`
	Attempts    int             `json:"attempts"`
	Publishes   int             `json:"publishes"`
	Retries     int             `json:"retries"`
	RetryOn     string          `json:"retry_on"`
	RetriedOn   string          `json:"retried_on"`
	CreatedAt   string          `json:"created_at"`
	QueuedAt    string          `json:"queued_at"`
	SendingAt   string          `json:"sending_at"`
	SentAt      string          `json:"sent_at"`
	DeliveredAt string          `json:"delivered_at"`
	FinishedAt  string          `json:"finished_at"`
	DeliverBy   string          `json:"deliver_by"`
	Reason      string          `json:"reason"`
	Response    json.RawMessage `json:"response"`
}

// idText is an id as typed on the command line: a string without quotes.
func idText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// writeCommand prints one command as "key: value" lines.
func writeCommand(w io.Writer, raw json.RawMessage) error {
	var c commandView
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("cannot decode the command: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, kv := range [][2]string{
		{"id", idText(c.ID)}, {"client", c.Client}, {"device", c.Device}, {"method", c.Method},
		{"status", c.Status}, {"attempts", fmt.Sprint(c.Attempts)}, {"publishes", fmt.Sprint(c.Publishes)},
		{"retry", retryText(c.Retries, c.RetryOn)}, {"retried_on", c.RetriedOn},
		{"created_at", c.CreatedAt}, {"queued_at", c.QueuedAt}, {"sending_at", c.SendingAt},
		{"sent_at", c.SentAt}, {"delivered_at", c.DeliveredAt}, {"finished_at", c.FinishedAt},
		{"deliver_by", c.DeliverBy}, {"reason", c.Reason}, {"response", string(c.Response)},
	} {
		if kv[1] != "" && kv[1] != "null" {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
	}
	return tw.Flush()
}

// retryText is a retry policy as one line: "2 on timeout,device_error",
// "" without one.
func retryText(retries int, on string) string {
	if retries == 0 {
		return ""
	}
	return fmt.Sprintf("%d on %s", retries, on)
}

// writeCommandTable prints commands one a line.
func writeCommandTable(w io.Writer, cmds []json.RawMessage, withReason bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if withReason {
		fmt.Fprintln(tw, "ID\tCLIENT\tDEVICE\tMETHOD\tSTATUS\tATTEMPTS\tCREATED\tREASON")
	} else {
		fmt.Fprintln(tw, "ID\tDEVICE\tMETHOD\tSTATUS\tATTEMPTS\tCREATED")
	}
	for _, raw := range cmds {
		var c commandView
		if err := json.Unmarshal(raw, &c); err != nil {
			return fmt.Errorf("cannot decode a command: %w", err)
		}
		if withReason {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", idText(c.ID), c.Client, c.Device, c.Method, c.Status, c.Attempts, c.CreatedAt, c.Reason)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", idText(c.ID), c.Device, c.Method, c.Status, c.Attempts, c.CreatedAt)
		}
	}
	return tw.Flush()
}

// writeJSON prints raw indented.
func writeJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("cannot decode the answer: %w", err)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// show calls the API (see call) and prints its answer: the JSON as it
// came with --json, else the table write makes of it.
func show(ctx context.Context, g *globals, asJSON bool, method, path, token, what string, write func(io.Writer, json.RawMessage) error) error {
	var raw json.RawMessage
	if err := call(ctx, g, cliAPI(g.API), asJSON, method, path, token, what, &raw); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(g.stdout, raw)
	}
	return write(g.stdout, raw)
}

// apiRequest is the one request of a showCmd.
type apiRequest struct{ method, path, what string }

// showCmd makes cmd (its Use, Short, Long, Example and Args) a command
// that sends one API request, built by request from its arguments and its
// caller, and shows the answer (show, with write): the caller's flags
// (authFlags; an operator's only when operatorOnly) and --json.
func showCmd(ctx context.Context, g *globals, cmd *cobra.Command, operatorOnly bool,
	request func(args []string, who caller) apiRequest, write func(io.Writer, json.RawMessage) error) *cobra.Command {
	var af authFlags
	var asJSON bool
	cmd.RunE = func(c *cobra.Command, args []string) error {
		who, err := af.resolve(c, g, operatorOnly)
		if err != nil {
			return err
		}
		r := request(args, who)
		return show(ctx, g, asJSON, r.method, r.path, who.token, r.what, write)
	}
	af.register(cmd, operatorOnly)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

// identityArg checks that the first argument is a valid identity (a
// device ID, a group name: kind), before any token is resolved.
func identityArg(kind string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if !protocol.ValidIdentity(args[0]) {
			return usageError("%q is not a valid %s", args[0], kind)
		}
		return nil
	}
}

// call sends one request and classifies its failure. With asJSON, an
// error answer's JSON body is printed to stdout as well.
func call(ctx context.Context, g *globals, api *API, asJSON bool, method, path, token, what string, out any) error {
	return callBody(ctx, g, api, asJSON, method, path, token, what, nil, out)
}

// callBody is call with a JSON request body.
func callBody(ctx context.Context, g *globals, api *API, asJSON bool, method, path, token, what string, body []byte, out any) error {
	_, err := api.Do(ctx, method, path, token, body, out)
	if err != nil {
		var ae *APIError
		if asJSON && errors.As(err, &ae) && json.Valid([]byte(ae.Body)) {
			_ = writeJSON(g.stdout, json.RawMessage(ae.Body))
		}
		return classify(api.Base, what, err)
	}
	return nil
}

// commandPath is /v1/commands/{id}.
func commandPath(id string) string { return "/v1/commands/" + url.PathEscape(id) }

func getCmd(ctx context.Context, g *globals) *cobra.Command {
	return showCmd(ctx, g, &cobra.Command{
		Use:   "get <id>",
		Short: "Show one command's status, transition times, attempts and response (GET /v1/commands/{id})",
		Long:  "Show one of the client's commands." + exitHelp,
		Example: `  devicesim get send-abc --client app-1
  devicesim get 42 --token "$TOKEN" --json`,
		Args: exactArgs(1),
	}, false, func(args []string, who caller) apiRequest {
		return apiRequest{http.MethodGet, commandPath(args[0]) + who.query(nil), fmt.Sprintf("get command %s of client %s", args[0], who.client)}
	}, writeCommand)
}

func listCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var device, status string
	var max, pageSize int
	cmd := &cobra.Command{
		Use:   "list --device <device>",
		Short: "List the client's recent commands to a device, newest first (GET /v1/devices/{device}/commands, every page)",
		Long: `List the client's recent commands to a device, newest first, following
next_cursor until the last page (or --max commands). --json prints
{"commands":[…]} with every page's commands.` + exitHelp,
		Example: `  devicesim list --device dev-1 --client app-1 --status queued`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !protocol.ValidIdentity(device) {
				return usageError("--device %q is not a valid device ID", device)
			}
			if status != "" && !protocol.Status(status).Valid() {
				return usageError("--status %q is not a status (%v)", status, protocol.Statuses)
			}
			who, err := af.resolve(cmd, g, false)
			if err != nil {
				return err
			}
			q := url.Values{}
			if status != "" {
				q.Set("status", status)
			}
			cmds, err := pages(ctx, g, cliAPI(g.API), asJSON, "/v1/devices/"+url.PathEscape(device)+"/commands", who, q, pageSize, max,
				fmt.Sprintf("list the commands of client %s to %s", who.client, device))
			if err != nil {
				return err
			}
			if asJSON {
				return writeList(g.stdout, cmds)
			}
			return writeCommandTable(g.stdout, cmds, false)
		},
	}
	af.register(cmd, false)
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "device ID (required)")
	f.StringVar(&status, "status", "", "only commands in this status")
	f.IntVar(&max, "max", 0, "stop after this many commands (0: all)")
	f.IntVar(&pageSize, "page-size", 100, "commands a request (1 to 100)")
	f.BoolVar(&asJSON, "json", false, "print the API's JSON")
	_ = cmd.MarkFlagRequired("device")
	return cmd
}

// writeList prints {"commands":[…]}.
func writeList(w io.Writer, cmds []json.RawMessage) error {
	if cmds == nil {
		cmds = []json.RawMessage{}
	}
	raw, err := json.Marshal(map[string]any{"commands": cmds})
	if err != nil {
		return err
	}
	return writeJSON(w, raw)
}

// pages reads a CommandList listing at path, pageSize commands a request,
// following next_cursor until the last page or max commands (0: no limit).
func pages(ctx context.Context, g *globals, api *API, asJSON bool, path string, who caller, q url.Values, pageSize, max int, what string) ([]json.RawMessage, error) {
	if pageSize < 1 || pageSize > 100 {
		return nil, usageError("--page-size %d is not within 1 and 100", pageSize)
	}
	var all []json.RawMessage
	q.Set("limit", fmt.Sprint(pageSize))
	for {
		var page struct {
			Commands   []json.RawMessage `json:"commands"`
			NextCursor string            `json:"next_cursor"`
		}
		if err := call(ctx, g, api, asJSON, http.MethodGet, path+who.query(q), who.token, what, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Commands...)
		if max > 0 && len(all) >= max {
			return all[:max], nil
		}
		if page.NextCursor == "" || len(page.Commands) == 0 {
			return all, nil
		}
		q.Set("cursor", page.NextCursor)
	}
}

func cancelCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var device string
	cmd := &cobra.Command{
		Use:   "cancel <id> | cancel --device <device>",
		Short: "Cancel one command, or all of the client's pending commands to a device (DELETE /v1/commands/{id}, /v1/devices/{device}/commands)",
		Long: `Cancel one command if it is not yet on the wire to its device (exit status 3
when it is, or is final), or with --device every one of the client's commands
to that device that is not yet on the wire.` + exitHelp,
		Example: `  devicesim cancel send-abc --client app-1
  devicesim cancel --device dev-1 --client app-1`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == (device != "") {
				return usageError("give either a command id or --device")
			}
			if device != "" && !protocol.ValidIdentity(device) {
				return usageError("--device %q is not a valid device ID", device)
			}
			who, err := af.resolve(cmd, g, false)
			if err != nil {
				return err
			}
			api := cliAPI(g.API)
			var raw json.RawMessage
			if device != "" {
				if err := call(ctx, g, api, asJSON, http.MethodDelete, "/v1/devices/"+url.PathEscape(device)+"/commands"+who.query(nil), who.token,
					fmt.Sprintf("cancel the commands of client %s to %s", who.client, device), &raw); err != nil {
					return err
				}
				if asJSON {
					return writeJSON(g.stdout, raw)
				}
				var res struct {
					Cancelled int `json:"cancelled"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return fmt.Errorf("cannot decode the answer: %w", err)
				}
				fmt.Fprintf(g.stdout, "cancelled %d commands of client %s to %s\n", res.Cancelled, who.client, device)
				return nil
			}
			if err := call(ctx, g, api, asJSON, http.MethodDelete, commandPath(args[0])+who.query(nil), who.token,
				fmt.Sprintf("cancel command %s of client %s", args[0], who.client), &raw); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(g.stdout, raw)
			}
			return writeCommand(g.stdout, raw)
		},
	}
	af.register(cmd, false)
	cmd.Flags().StringVar(&device, "device", "", "cancel every pending command to this device")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

func waitCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait <id>",
		Short: "Wait until a command is final and print it (GET /v1/commands/{id}?wait=, long-polled)",
		Long: `Long-poll the command (GET /v1/commands/{id}?wait=, at most 60 s a request)
until it is final or --timeout passes, then print it.
` + exitHelp + `
For wait: 0 the command ended succeeded; 6 it ended with another final
status (failed, timeout, expired, cancelled, rejected, dead, lost); 7 --timeout
passed first (the last status is printed).`,
		Example: `  devicesim wait send-abc --client app-1 --timeout 2m`,
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
			what := fmt.Sprintf("wait for command %s of client %s", args[0], who.client)
			deadline := time.Now().Add(timeout)
			for {
				left := time.Until(deadline)
				q := url.Values{}
				if left > 0 {
					q.Set("wait", min(left, 60*time.Second).Round(time.Millisecond).String())
				}
				var raw json.RawMessage
				if err := call(ctx, g, api, asJSON, http.MethodGet, commandPath(args[0])+who.query(q), who.token, what, &raw); err != nil {
					return err
				}
				var c commandView
				if err := json.Unmarshal(raw, &c); err != nil {
					return fmt.Errorf("cannot decode the command: %w", err)
				}
				final := protocol.Status(c.Status).Final()
				if final || time.Until(deadline) <= 0 {
					if asJSON {
						err = writeJSON(g.stdout, raw)
					} else {
						err = writeCommand(g.stdout, raw)
					}
					if err != nil {
						return err
					}
					switch {
					case c.Status == string(protocol.StatusSucceeded):
						return nil
					case final:
						return &apiFailure{Code: exitNotSucceded, Err: fmt.Errorf("command %s ended %s", args[0], c.Status)}
					}
					return &apiFailure{Code: exitWaitTimeout, Err: fmt.Errorf("command %s is still %s after %s", args[0], c.Status, timeout)}
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

func deadCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var max, pageSize int
	cmd := &cobra.Command{
		Use:   "dead",
		Short: "List dead-lettered commands, newest first (GET /v1/dead, every page; operator token)",
		Long: `List dead-lettered commands with their reason, following next_cursor until
the last page (or --max commands). Needs an operator token: --token, or one
minted for --operator with --secret. --json prints {"commands":[…]}.` + exitHelp,
		Example: `  devicesim dead --json`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			who, err := af.resolve(cmd, g, true)
			if err != nil {
				return err
			}
			cmds, err := pages(ctx, g, cliAPI(g.API), asJSON, "/v1/dead", who, url.Values{}, pageSize, max, "list dead commands")
			if err != nil {
				return err
			}
			if asJSON {
				return writeList(g.stdout, cmds)
			}
			return writeCommandTable(g.stdout, cmds, true)
		},
	}
	af.register(cmd, true)
	cmd.Flags().IntVar(&max, "max", 0, "stop after this many commands (0: all)")
	cmd.Flags().IntVar(&pageSize, "page-size", 100, "commands a request (1 to 100)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

func replayCmd(ctx context.Context, g *globals) *cobra.Command {
	var af authFlags
	var asJSON bool
	var client string
	cmd := &cobra.Command{
		Use:   "replay <id> --client <client>",
		Short: "Put a dead command back on the queue (POST /v1/dead/{id}/replay; operator token)",
		Long: `Put a dead command of --client back on the commands queue. Needs an operator
token: --token, or one minted for --operator with --secret. Exit status 3 when
the command is neither dead nor a replay waiting for a worker.` + exitHelp,
		Example: `  devicesim replay send-abc --client app-1`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !protocol.ValidIdentity(client) {
				return usageError("--client %q is not a valid identity", client)
			}
			who, err := af.resolve(cmd, g, true)
			if err != nil {
				return err
			}
			q := url.Values{"client": {client}}
			return show(ctx, g, asJSON, http.MethodPost, "/v1/dead/"+url.PathEscape(args[0])+"/replay?"+q.Encode(), who.token, fmt.Sprintf("replay command %s of client %s", args[0], client), writeCommand)
		},
	}
	af.register(cmd, true)
	cmd.Flags().StringVar(&client, "client", "", "the client whose command it is (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	_ = cmd.MarkFlagRequired("client")
	return cmd
}

func connectCmd(ctx context.Context, g *globals) *cobra.Command {
	var token, operator string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "connect <identity>",
		Short: "Show which push server owns an identity (GET /v1/connect/{identity})",
		Long: `Show the push server (node and MQTT URL) a client or device with this identity
connects to. The token is --token (its sub must be the identity, or it is an
operator's), or one minted with --secret: for the identity itself, or for
--operator.` + exitHelp,
		Example: `  devicesim connect dev-1`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			identity := args[0]
			if !protocol.ValidIdentity(identity) {
				return usageError("%q is not a valid identity", identity)
			}
			if token == "" {
				secret, err := g.secret()
				if err != nil {
					return usageError("%v", err)
				}
				if operator != "" {
					token, err = auth.Mint(secret, operator, auth.RoleOperator, nil, time.Hour)
				} else {
					token, err = auth.Mint(secret, identity, auth.RoleDevice, nil, time.Hour)
				}
				if err != nil {
					return usageError("cannot mint a token: %v", err)
				}
			}
			var raw json.RawMessage
			if err := call(ctx, g, cliAPI(g.API), asJSON, http.MethodGet, "/v1/connect/"+url.PathEscape(identity), token,
				"find the push server of "+identity, &raw); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(g.stdout, raw)
			}
			var o Owner
			if err := json.Unmarshal(raw, &o); err != nil {
				return fmt.Errorf("cannot decode the answer: %w", err)
			}
			fmt.Fprintf(g.stdout, "%s\t%s\n", o.Node, o.MQTTURL)
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "bearer token (default: minted with --secret or GW_AUTH_SECRET)")
	cmd.Flags().StringVar(&operator, "operator", "", "mint an operator token for this identity instead")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

// exactArgs is cobra.ExactArgs with exit status 1 and a message naming
// the command.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("%s takes %d argument(s), got %d (see %s --help)", cmd.Name(), n, len(args), cmd.CommandPath())
		}
		return nil
	}
}
