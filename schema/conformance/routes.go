// Package conformance carries the contract's shared test cases, so that
// every implementation reads the same file: RoutesJSON is routes.json, the
// route matching rules as cases (see docs/host-protocol.md). The
// conformance kit (daemon/conformance) runs them against a host's matcher.
package conformance

import _ "embed"

// RoutesJSON is routes.json.
//
//go:embed routes.json
var RoutesJSON []byte
