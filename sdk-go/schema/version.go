package schema

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ProtocolVersion is the newest protocol version this tree's schema
// describes. Version 0 is never valid: it means "no common version".
const ProtocolVersion uint16 = 1

// SupportedVersions lists every protocol version this tree speaks, on every
// face.
var SupportedVersions = []uint16{1}

// VersionMismatchError reports that two sides share no protocol version.
type VersionMismatchError struct {
	Face   string   // "plugin", "host" or "control"
	Self   string   // who this side is ("the daemon", "this plugin")
	Peer   string   // who the other side is ("plugin \"subs\"", "the daemon")
	Local  []uint16 // versions this side speaks
	Remote []uint16 // versions the other side offered
}

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("%s protocol version mismatch: %s speaks %s but %s speaks %s; upgrade whichever is older",
		e.Face, e.Peer, FormatVersions(e.Remote), e.Self, FormatVersions(e.Local))
}

// Negotiate returns the highest version present in both lists, or a
// *VersionMismatchError naming both sides and both lists. self and peer
// name the two sides for that message.
func Negotiate(face, self, peer string, local, remote []uint16) (uint16, error) {
	var best uint16
	for _, v := range remote {
		if v > best && v != 0 && slices.Contains(local, v) {
			best = v
		}
	}
	if best == 0 {
		return 0, &VersionMismatchError{Face: face, Self: self, Peer: peer, Local: slices.Clone(local), Remote: slices.Clone(remote)}
	}
	return best, nil
}

// FormatVersions renders a version list for people: "v1", "v1–v3",
// "v1, v3", or "none".
func FormatVersions(vs []uint16) string {
	if len(vs) == 0 {
		return "no versions"
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	s = slices.Compact(s)
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, "v"+strconv.Itoa(int(s[i])))
		} else {
			parts = append(parts, fmt.Sprintf("v%d–v%d", s[i], s[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}
