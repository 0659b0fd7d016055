package main

import (
	"context"
	"fmt"
	"html"
	"os"
	"os/exec"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

func (c *cli) consoleCmd() *cobra.Command {
	var open bool
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Print a one-time login URL for the daemon's operator console",
		Long: `console asks the daemon, over the control socket, for a login URL of its
operator console (dimplugd serve --console-listen 127.0.0.1:PORT): a web page
showing what dimplugctl shows, with enable, disable, restart and global
settings. The URL works once, within 60 seconds; opening it starts a browser
session of 12 hours. Only operators (who may use the control socket) get one.

The URL goes to stdout, alone, for scripts. With --open, xdg-open opens it
through a private file, so that the token never shows in a process list.

A console on a Unix socket (--console-socket) needs no login: its permissions
are the right. Use curl --unix-socket PATH http://console/api/plugins.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			var url string
			err := c.withControl(func(ctx context.Context, ctl *host.Control) (err error) {
				url, err = ctl.ConsoleLogin(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if c.json {
				return c.printJSON(map[string]string{"url": url})
			}
			fmt.Fprintln(c.out, url)
			fmt.Fprintln(c.errw, "Open it in a browser on this machine within a minute; it works once.")
			if open {
				if err := openBrowser(url); err != nil {
					fmt.Fprintf(c.errw, "could not open a browser (%v); open the URL above by hand\n", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&open, "open", false, "also open the URL in the desktop's browser (xdg-open)")
	return cmd
}

// openBrowser opens url with xdg-open through a 0600 file that redirects
// to it: the token stays out of every command line.
func openBrowser(url string) error {
	f, err := os.CreateTemp("", "dimplugd-console-*.html")
	if err != nil {
		return err
	}
	page := `<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=` + html.EscapeString(url) + `"><title>dimplugd console</title>`
	if _, err := f.WriteString(page); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	cmd := exec.Command("xdg-open", f.Name())
	if err := cmd.Start(); err != nil {
		os.Remove(f.Name())
		return err
	}
	// xdg-open outlives dimplugctl; the file is left for it (it is the
	// operator's alone, and its token is dead within a minute).
	return cmd.Process.Release()
}
