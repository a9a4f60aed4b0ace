package main

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
)

// CORS (GW_CORS_ORIGINS): browsers on the configured origins may call the
// API.
//
//	request                          from a configured origin           from any other origin
//	preflight (OPTIONS with Origin)  204, Access-Control-Allow-Origin   204 without CORS headers: the
//	                                 (the origin), -Allow-Methods (the  browser does not send the request
//	                                 path's methods), -Allow-Headers
//	                                 (Authorization, Content-Type),
//	                                 -Max-Age 600
//	any other request with Origin    handled as usual, plus             handled as usual, no CORS headers:
//	                                 Access-Control-Allow-Origin and    the browser keeps the answer from
//	                                 -Expose-Headers: Retry-After       the page
//
// A preflight carries no token: it is answered before authentication,
// the rate limit and the bound on requests in flight. No credentials
// mode: tokens travel in Authorization, which the page sets itself, never
// in cookies, so Access-Control-Allow-Credentials is not sent. Every
// answer varies on Origin. Origins match exactly (scheme, host, port);
// "*" allows every origin.

// corsMaxAge is how long (seconds) a browser may cache a preflight.
const corsMaxAge = 600

// cors returns the CORS middleware for Config.CORSOrigins.
func (s *Server) cors() echo.MiddlewareFunc {
	origins := s.cfg.CORSOrigins
	all := slices.Contains(origins, "*")
	return middleware.CORSWithConfig(middleware.CORSConfig{
		AllowOriginFunc: func(origin string) (bool, error) {
			return all || slices.Contains(origins, origin), nil
		},
		// No AllowMethods: a preflight is answered with the methods the
		// router has for the path.
		AllowHeaders:  []string{echo.HeaderAuthorization, echo.HeaderContentType},
		ExposeHeaders: []string{"Retry-After"},
		MaxAge:        corsMaxAge,
	})
}

// checkOrigin reports whether o is "*" or an origin as browsers send it:
// http or https, a host, an optional port, nothing else.
func checkOrigin(o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil ||
		strings.ContainsAny(u.Host, "*?") { // origins match exactly: a pattern would match nothing
		return fmt.Errorf("%q is not an origin (want scheme://host[:port], or *)", o)
	}
	return nil
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
