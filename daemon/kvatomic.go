package daemon

import (
	"context"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// CompareAndSwap is KeyValue.compareAndSwap: one registry transaction.
func (s *kvServer) CompareAndSwap(ctx context.Context, call schema.KeyValue_compareAndSwap) error {
	a := call.Args()
	key, err := a.Key()
	if err != nil {
		return err
	}
	old, err := a.Old()
	if err != nil {
		return err
	}
	next, err := a.New()
	if err != nil {
		return err
	}
	swapped, cur, found, err := s.kv.CompareAndSwap(key, old, a.OldFound(), next, a.Delete())
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetSwapped(swapped)
	res.SetFound(found)
	if found {
		return res.SetValue(cur)
	}
	return nil
}

// Increment is KeyValue.increment: one registry transaction.
func (s *kvServer) Increment(ctx context.Context, call schema.KeyValue_increment) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	sum, err := s.kv.Increment(key, call.Args().Delta())
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(sum)
	return nil
}
