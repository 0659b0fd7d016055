package daemon

import (
	"net/netip"
)

// addrClass says why an address is not an ordinary public Internet
// address; the zero value (classPublic) means it is one.
type addrClass struct {
	name string // e.g. "a loopback address"; "" for public
}

func (c addrClass) public() bool { return c.name == "" }

// specialRanges are the non-public ranges fetch refuses unless the grant
// names the address, after the checks netip provides (loopback, private,
// link-local, multicast, unspecified). From the IANA special-purpose
// address registries.
var specialRanges = []struct {
	prefix netip.Prefix
	class  string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `a "this network" address`},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT (shared, RFC 6598) address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol assignment address"},
	{netip.MustParsePrefix("192.0.2.0/24"), "a documentation address"},
	{netip.MustParsePrefix("198.51.100.0/24"), "a documentation address"},
	{netip.MustParsePrefix("203.0.113.0/24"), "a documentation address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("192.88.99.0/24"), "a 6to4 relay anycast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address"}, // includes 255.255.255.255
	{netip.MustParsePrefix("::/96"), "an IPv4-compatible (deprecated) address"},
	{netip.MustParsePrefix("100::/64"), "a discard-only address"},
	{netip.MustParsePrefix("2001::/32"), "a Teredo tunnel address"},
	{netip.MustParsePrefix("2001:2::/48"), "a benchmarking address"},
	{netip.MustParsePrefix("2001:db8::/32"), "a documentation address"},
	{netip.MustParsePrefix("3fff::/20"), "a documentation address"},
	{netip.MustParsePrefix("fec0::/10"), "a site-local (deprecated, private) address"},
	{netip.MustParsePrefix("5f00::/16"), "a segment routing (SRv6) address"},
}

// Prefixes whose addresses embed an IPv4 address that a gateway reaches
// for the client: the embedded address is classified too.
var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour  = netip.MustParsePrefix("2002::/16")
)

// classify says whether a (as returned by a resolver or written in a URL)
// is a public unicast address, and if not, what it is. IPv4-mapped IPv6
// addresses are classified as the IPv4 address they map; NAT64 and 6to4
// addresses by the IPv4 address they embed.
func classify(a netip.Addr) addrClass {
	a = a.WithZone("").Unmap()
	switch {
	case !a.IsValid():
		return addrClass{"an invalid address"}
	case a.IsUnspecified():
		return addrClass{"an unspecified address"}
	case a.IsLoopback():
		return addrClass{"a loopback address"}
	case a.Is4() && a.As4() == [4]byte{169, 254, 169, 254}:
		return addrClass{"a link-local address (the cloud metadata service)"}
	case a.IsLinkLocalUnicast():
		return addrClass{"a link-local address"}
	case a.IsMulticast():
		return addrClass{"a multicast address"}
	case a.IsPrivate():
		if a.Is6() {
			return addrClass{"a private (unique local, fc00::/7) address"}
		}
		return addrClass{"a private (RFC 1918) address"}
	}
	for _, r := range specialRanges {
		if r.prefix.Contains(a) {
			return addrClass{r.class}
		}
	}
	if a.Is6() {
		b := a.As16()
		var v4 netip.Addr
		switch {
		case nat64.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		case nat64Local.Contains(a):
			return addrClass{"a local-use NAT64 address"}
		case sixToFour.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		}
		if v4.IsValid() {
			if c := classify(v4); !c.public() {
				return addrClass{c.name + " (" + v4.String() + ") embedded in a NAT64 or 6to4 address"}
			}
		}
	}
	if !a.IsGlobalUnicast() {
		return addrClass{"not a global unicast address"}
	}
	return addrClass{}
}
