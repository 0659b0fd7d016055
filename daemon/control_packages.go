package daemon

import (
	"context"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// notYet answers a control method whose implementation has not landed:
// the schema is fixed first so that the pieces of issue #14 (packages,
// trust, transactions, data) land one by one.
func notYet(what string) error {
	return errdefs.ToWire(errdefs.New(errdefs.ErrUnavailable, what+" is not available in this dimplugd yet"))
}

func (c *control) Rollback(ctx context.Context, call schema.Control_rollback) error {
	return errdefs.ToWire(c.rollback(call))
}

func (c *control) rollback(call schema.Control_rollback) error {
	name, err := call.Args().Name()
	if name, err = readName("plugin", name, err); err != nil {
		return err
	}
	if _, err := c.d.Rollback(name); err != nil {
		return err
	}
	return statusInto(c.d, call.AllocResults, name)
}
