//go:build race

package main

// raceEnabled marks a build with the race detector, whose numbers mean
// little; the harness says so in its header.
const raceEnabled = true
