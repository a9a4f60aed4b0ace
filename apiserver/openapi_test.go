package main

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// TestOpenAPIDocumentLints loads openapi.yaml with kin-openapi and lints
// it: the document validates (every schema, example, reference and
// default), it names its servers, and every operation has a unique
// operationId, a summary and a documented 401, so generated clients get
// stable method names (the generated Go client is checked in
// examples/go/apiclient).
func TestOpenAPIDocumentLints(t *testing.T) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openapiYAML)
	if err != nil {
		t.Fatalf("cannot load openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation(), openapi3.EnableSchemaDefaultsValidation(), openapi3.EnableSchemaPatternValidation()); err != nil {
		t.Fatalf("openapi.yaml does not validate: %v", err)
	}

	if len(doc.Servers) == 0 {
		t.Fatal("openapi.yaml has no servers, want at least one")
	}
	for _, s := range doc.Servers {
		u := s.URL
		for name, v := range s.Variables {
			u = strings.ReplaceAll(u, "{"+name+"}", v.Default)
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			t.Errorf("server %q expands to %q, want an absolute http(s) URL", s.URL, u)
		}
		if s.Description == "" {
			t.Errorf("server %q has no description", s.URL)
		}
	}

	// Operations that answer without a token.
	public := map[string]bool{"dashboard": true, "healthz": true, "readyz": true, "metrics": true, "openapi": true}
	ids := map[string]string{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			switch {
			case op.OperationID == "":
				t.Errorf("%s has no operationId", where)
				continue
			case ids[op.OperationID] != "":
				t.Errorf("%s repeats operationId %q of %s", where, op.OperationID, ids[op.OperationID])
			}
			ids[op.OperationID] = where
			if op.Summary == "" {
				t.Errorf("%s (%s) has no summary", where, op.OperationID)
			}
			if !public[op.OperationID] && op.Responses.Value("401") == nil {
				t.Errorf("%s (%s) documents no 401, want one (every token-checked operation can answer it)", where, op.OperationID)
			}
		}
	}
	if len(ids) == 0 {
		t.Fatal("openapi.yaml has no operations")
	}
}
