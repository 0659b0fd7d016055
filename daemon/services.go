package daemon

import (
	"context"
	"strings"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/schema"
)

// logServer is the Logger capability granted to a plugin: lines land in the
// plugin's log buffer.
type logServer struct{ u *unit }

func (s *logServer) Log(ctx context.Context, call schema.Logger_log) error {
	args := call.Args()
	text, err := args.Text()
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString(strings.ToUpper(args.Level().String()))
	b.WriteByte(' ')
	b.WriteString(text)
	fields, err := args.Fields()
	if err != nil {
		return err
	}
	for i := 0; i < fields.Len(); i++ {
		f := fields.At(i)
		k, _ := f.Key()
		v, _ := f.Value()
		b.WriteByte(' ')
		b.WriteString(k)
		b.WriteByte('=')
		if strings.ContainsAny(v, " \t\"=") {
			v = `"` + strings.ReplaceAll(v, `"`, `\"`) + `"`
		}
		b.WriteString(v)
	}
	s.u.logs.Append("log", b.String())
	return nil
}

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
