package wire

import (
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// ReadPermissions converts the wire form of a grant.
func ReadPermissions(g schema.Permissions) manifest.Permissions {
	p := manifest.Permissions{
		Memory:    manifest.Size(g.MemoryBytes()),
		Pids:      g.Pids(),
		CPU:       float64(g.CpuMillis()) / 1000,
		Tmp:       manifest.Size(g.TmpBytes()),
		OpenFiles: g.OpenFiles(),
	}
	if l, err := g.ReadOnlyPaths(); err == nil {
		for i := 0; i < l.Len(); i++ {
			s, _ := l.At(i)
			p.ReadOnlyPaths = append(p.ReadOnlyPaths, s)
		}
	}
	if l, err := g.OutboundHosts(); err == nil {
		for i := 0; i < l.Len(); i++ {
			s, _ := l.At(i)
			p.OutboundHosts = append(p.OutboundHosts, s)
		}
	}
	return p
}

// WritePermissions converts a grant to its wire form.
func WritePermissions(g schema.Permissions, p manifest.Permissions) error {
	g.SetMemoryBytes(int64(p.Memory))
	g.SetPids(p.Pids)
	g.SetCpuMillis(int64(p.CPU * 1000))
	g.SetTmpBytes(int64(p.Tmp))
	g.SetOpenFiles(p.OpenFiles)
	if len(p.ReadOnlyPaths) > 0 {
		l, err := g.NewReadOnlyPaths(int32(len(p.ReadOnlyPaths)))
		if err != nil {
			return err
		}
		for i, s := range p.ReadOnlyPaths {
			if err := l.Set(i, s); err != nil {
				return err
			}
		}
	}
	if len(p.OutboundHosts) > 0 {
		l, err := g.NewOutboundHosts(int32(len(p.OutboundHosts)))
		if err != nil {
			return err
		}
		for i, s := range p.OutboundHosts {
			if err := l.Set(i, s); err != nil {
				return err
			}
		}
	}
	return nil
}
