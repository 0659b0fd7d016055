package main

import (
	"context"
	"net"
	"os"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

func main() {
	f := os.NewFile(3, "lane")
	c, err := net.FileConn(f)
	if err != nil {
		panic(err)
	}
	wire.ServeLane(context.Background(), c, func(ctx context.Context, req, reply schema.LaneFrame) error {
		hr, err := reply.NewHookResult()
		if err != nil {
			return err
		}
		hr.SetContinue()
		return nil
	})
}
