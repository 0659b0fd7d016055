package daemon

import (
	"context"

	"github.com/dimplugd/dimplugd/schema"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// notYet answers a control method whose implementation has not landed:
// the schema is fixed first so that the pieces of issue #14 (packages,
// trust, transactions, data) land one by one.
func notYet(what string) error {
	return errdefs.ToWire(errdefs.New(errdefs.ErrUnavailable, what+" is not available in this dimplugd yet"))
}

func (c *control) InstallStream(ctx context.Context, call schema.Control_installStream) error {
	return notYet("installing a streamed package")
}

func (c *control) Rollback(ctx context.Context, call schema.Control_rollback) error {
	return notYet("rollback")
}

func (c *control) Uninstall(ctx context.Context, call schema.Control_uninstall) error {
	return notYet("uninstall")
}

func (c *control) ExportData(ctx context.Context, call schema.Control_exportData) error {
	return notYet("data export")
}

func (c *control) ImportData(ctx context.Context, call schema.Control_importData) error {
	return notYet("data import")
}

func (c *control) TrustAdd(ctx context.Context, call schema.Control_trustAdd) error {
	return notYet("trusted keys")
}

func (c *control) TrustList(ctx context.Context, call schema.Control_trustList) error {
	return notYet("trusted keys")
}

func (c *control) TrustRemove(ctx context.Context, call schema.Control_trustRemove) error {
	return notYet("trusted keys")
}

func (k *kvServer) CompareAndSwap(ctx context.Context, call schema.KeyValue_compareAndSwap) error {
	return notYet("compare-and-swap")
}

func (k *kvServer) Increment(ctx context.Context, call schema.KeyValue_increment) error {
	return notYet("increment")
}
