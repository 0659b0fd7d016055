// Package layout holds the repository's structural tests: every package of
// the main module says what it owns, and the SDK stays a module of its own
// (sdk-go/schema's tests check the SDK module itself).
package layout
