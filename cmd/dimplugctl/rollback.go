package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// rollbackCmd is `dimplugctl rollback NAME`: back to the version before
// the last upgrade. The daemon keeps one previous version per plugin; the
// version rolled back from becomes the previous one, so a second rollback
// returns to it.
func (c *cli) rollbackCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rollback <name>",
		Short: "Return a plugin to the version before its last upgrade (files, grant and data)",
		Long: `Return a plugin to the version it had before its last upgrade
(install --replace): its files, grant and key-value data as they were when
the upgrade was made. The new version starts beside the running one and
takes over when it is healthy; if it does not become healthy, nothing
changes and the error says why. The version rolled back from is kept as the
previous one: rolling back again returns to it. Settings are not part of a
rollback. dimplugctl inspect shows the previous version.`,
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				st, err := ctl.Rollback(ctx, args[0])
				if err != nil {
					return fmt.Errorf("roll back %s: %w", args[0], err)
				}
				if c.json {
					return c.printJSON(st)
				}
				fmt.Fprintf(c.out, "rolled back %s to %s (%s, %s; previous: %s)\n", st.Name, st.Version, enabledWord(st.Enabled), st.State, st.PreviousVersion)
				return nil
			})
		},
	}
}
