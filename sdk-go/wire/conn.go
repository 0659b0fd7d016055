package wire

import (
	"bufio"
	"io"
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

// MaxMessageSize is the largest Cap'n Proto message accepted on any
// dimplugd connection. Bigger payloads (media frames) travel outside RPC
// messages.
const MaxMessageSize = 64 << 20

// NewTransport returns a Cap'n Proto transport over rwc that buffers reads,
// so that decoding one message costs one read syscall instead of about three.
// Closing the transport closes rwc.
func NewTransport(rwc io.ReadWriteCloser) transport.Transport {
	br := bufio.NewReaderSize(rwc, 64<<10)
	dec := capnp.NewDecoder(br)
	dec.MaxMessageSize = MaxMessageSize
	return transport.New(&codec{dec: dec, enc: capnp.NewEncoder(rwc), c: rwc})
}

type codec struct {
	dec *capnp.Decoder
	enc *capnp.Encoder
	c   io.Closer

	// The rpc package sends from several goroutines; Encoder is not safe
	// for concurrent use.
	mu sync.Mutex
}

func (c *codec) Encode(m *capnp.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.enc.Encode(m)
}

func (c *codec) Decode() (*capnp.Message, error) { return c.dec.Decode() }
func (c *codec) Close() error                    { return c.c.Close() }

// NewConn starts a Cap'n Proto RPC connection over rwc, offering bootstrap
// (which it takes ownership of; a zero Client offers nothing). The caller
// owns the connection and must Close it.
func NewConn(rwc io.ReadWriteCloser, bootstrap capnp.Client, logger rpc.Logger) *rpc.Conn {
	return rpc.NewConn(NewTransport(rwc), &rpc.Options{
		BootstrapClient: bootstrap,
		Logger:          logger,
	})
}
