package daemon

import (
	"context"
	"strings"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// logServer is the Logger capability granted to a plugin: lines land in the
// plugin's log buffer as source "log", cut to the buffer's line cap.
type logServer struct{ u *unit }

func (s *logServer) Log(ctx context.Context, call schema.Logger_log) error {
	args := call.Args()
	text, err := args.Text()
	if err != nil {
		return err
	}
	fields, err := args.Fields()
	if err != nil {
		return err
	}
	// Build at most the line cap; count the rest.
	b := cappedBuilder{max: s.u.logs.Limits().LineBytes}
	b.WriteString(strings.ToUpper(args.Level().String()))
	b.WriteString(" ")
	b.WriteString(text)
	for i := 0; i < fields.Len(); i++ {
		f := fields.At(i)
		k, _ := f.Key()
		v, _ := f.Value()
		b.WriteString(" ")
		b.WriteString(k)
		b.WriteString("=")
		if b.full() {
			b.dropped += len(v) // not quoted: an estimate, without copying v
			continue
		}
		if strings.ContainsAny(v, " \t\"=") {
			v = `"` + strings.ReplaceAll(v, `"`, `\"`) + `"`
		}
		b.WriteString(v)
	}
	s.u.logs.AppendCut(logbuf.Log, b.String(), b.dropped)
	return nil
}

// cappedBuilder keeps the first max bytes written and counts the rest.
type cappedBuilder struct {
	b       strings.Builder
	max     int
	dropped int
}

func (c *cappedBuilder) WriteString(s string) {
	if room := c.max - c.b.Len(); room < len(s) {
		c.dropped += len(s) - max(room, 0)
		s = s[:max(room, 0)]
	}
	c.b.WriteString(s)
}

func (c *cappedBuilder) full() bool { return c.b.Len() >= c.max }

func (c *cappedBuilder) String() string { return c.b.String() }

// kvServer is the KeyValue capability granted to a plugin, backed by the
// plugin's bucket in the registry.
type kvServer struct{ kv *registry.KV }

func (s *kvServer) Get(ctx context.Context, call schema.KeyValue_get) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	v, ok, err := s.kv.Get(key)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetFound(ok)
	if ok {
		return res.SetValue(v)
	}
	return nil
}

func (s *kvServer) Set(ctx context.Context, call schema.KeyValue_set) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	v, err := call.Args().Value()
	if err != nil {
		return err
	}
	return s.kv.Set(key, v)
}

func (s *kvServer) Delete(ctx context.Context, call schema.KeyValue_delete) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	return s.kv.Delete(key)
}

func (s *kvServer) List(ctx context.Context, call schema.KeyValue_list) error {
	prefix, err := call.Args().Prefix()
	if err != nil {
		return err
	}
	keys, err := s.kv.List(prefix, int(call.Args().Limit()))
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	l, err := res.NewKeys(int32(len(keys)))
	if err != nil {
		return err
	}
	for i, k := range keys {
		if err := l.Set(i, k); err != nil {
			return err
		}
	}
	return nil
}
