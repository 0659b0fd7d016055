// Command hostileclient is a local client of dimplugd for the hostile
// suite (daemon/hostile_clients_test.go): the tests run it under other
// uids and groups. It prints one line per attempt: "OK <detail>" or
// "ERR <error>", and always exits 0 unless its arguments are wrong.
//
//	hostileclient dispatch SOCKET         host session + one request-phase dispatch
//	hostileclient control SOCKET [NAME]   control session; with NAME, then
//	                                      tries to disable and remove NAME
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: hostileclient dispatch|control SOCKET [NAME]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sock := os.Args[2]
	switch os.Args[1] {
	case "dispatch":
		s, err := host.Dial(ctx, sock, host.WithoutDirectLanes())
		if err != nil {
			fmt.Println("ERR", err)
			return
		}
		defer s.Close()
		res, err := s.Dispatch(ctx, host.PhaseRequest, &host.Request{Method: "GET", Path: "/api/v1/media/forbidden"}, nil)
		if err != nil {
			fmt.Println("ERR", err)
			return
		}
		status := 0
		if res.Response != nil {
			status = res.Response.Status
		}
		fmt.Printf("OK dispatch status %d applied %v\n", status, res.Applied)
	case "control":
		c, err := host.DialControl(ctx, sock, host.WithClientName("hostileclient"))
		if err != nil {
			fmt.Println("ERR", err)
			return
		}
		defer c.Close()
		fmt.Println("OK control session")
		if len(os.Args) > 3 {
			name := os.Args[3]
			if _, err := c.Disable(ctx, name); err != nil {
				fmt.Println("ERR disable", err)
			} else {
				fmt.Println("OK disabled", name)
			}
			if err := c.Remove(ctx, name); err != nil {
				fmt.Println("ERR remove", err)
			} else {
				fmt.Println("OK removed", name)
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}
