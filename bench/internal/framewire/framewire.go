// Package framewire is the gRPC baseline of the benchmark's streams
// section: a client-streaming service that receives frames and answers,
// once the client closes its side, with how many it got.
//
// The messages are written in protobuf's wire format by hand with
// protowire, like bench/internal/hookwire, so no .proto file or generated
// code is needed. As a .proto file would state it:
//
//	message Chunk { bytes data = 1; }
//	message Ack   { uint64 frames = 1; uint64 bytes = 2; }
//	service Sink  { rpc Send(stream Chunk) returns (Ack); }
//
// Marshal copies the frame into the message, as generated protobuf code
// does; Unmarshal copies it out into the Chunk's buffer, reusing its
// capacity (what a careful receiver would do). The codec is registered with
// gRPC under the content subtype "framewire"; clients select it per call
// with grpc.CallContentSubtype. Everything else is gRPC's default.
package framewire

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// Chunk is one frame.
type Chunk struct{ Data []byte }

// Ack is the server's answer: what it received.
type Ack struct{ Frames, Bytes uint64 }

// CodecName is the gRPC content subtype of Codec.
const CodecName = "framewire"

func init() { encoding.RegisterCodec(Codec{}) }

// Codec marshals *Chunk and *Ack in protobuf's wire format.
type Codec struct{}

// Name implements encoding.Codec.
func (Codec) Name() string { return CodecName }

// Marshal implements encoding.Codec.
func (Codec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *Chunk:
		b := make([]byte, 0, protowire.SizeTag(1)+protowire.SizeBytes(len(m.Data)))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		return protowire.AppendBytes(b, m.Data), nil
	case *Ack:
		var b []byte
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, m.Frames)
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		return protowire.AppendVarint(b, m.Bytes), nil
	}
	return nil, fmt.Errorf("framewire: cannot marshal %T", v)
}

// Unmarshal implements encoding.Codec.
func (Codec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case *Chunk:
		m.Data = m.Data[:0]
		return fields(data, func(num protowire.Number, b []byte, _ uint64) {
			if num == 1 {
				m.Data = append(m.Data, b...)
			}
		})
	case *Ack:
		*m = Ack{}
		return fields(data, func(num protowire.Number, _ []byte, x uint64) {
			switch num {
			case 1:
				m.Frames = x
			case 2:
				m.Bytes = x
			}
		})
	}
	return fmt.Errorf("framewire: cannot unmarshal into %T", v)
}

// fields calls fn for each bytes or varint field of a message.
func fields(b []byte, fn func(num protowire.Number, v []byte, x uint64)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			fn(num, v, 0)
			b = b[n:]
		case protowire.VarintType:
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			fn(num, nil, x)
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}

// Sink is the service: it counts what it receives.
type Sink interface{ sink() }

type sinkServer struct{}

func (sinkServer) sink() {}

// streamDesc is what protoc-gen-go-grpc would generate for Sink.Send.
var streamDesc = grpc.StreamDesc{
	StreamName:    "Send",
	ClientStreams: true,
	Handler: func(_ any, stream grpc.ServerStream) error {
		var c Chunk
		var ack Ack
		for {
			err := stream.RecvMsg(&c)
			if errors.Is(err, io.EOF) {
				return stream.SendMsg(&ack)
			}
			if err != nil {
				return err
			}
			ack.Frames++
			ack.Bytes += uint64(len(c.Data))
		}
	},
}

const methodSend = "/framewire.Sink/Send"

// Register registers the Sink service on s.
func Register(s *grpc.Server) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: "framewire.Sink",
		HandlerType: (*Sink)(nil),
		Streams:     []grpc.StreamDesc{streamDesc},
		Metadata:    "framewire",
	}, sinkServer{})
}

// Send streams n frames of data to the sink on cc and returns its Ack.
func Send(ctx context.Context, cc *grpc.ClientConn, data []byte, n int) (*Ack, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := cc.NewStream(ctx, &streamDesc, methodSend, grpc.CallContentSubtype(CodecName))
	if err != nil {
		return nil, err
	}
	c := &Chunk{Data: data}
	for range n {
		if err := st.SendMsg(c); err != nil {
			if errors.Is(err, io.EOF) { // the server ended the call: its status says why
				err = st.RecvMsg(new(Ack))
			}
			return nil, fmt.Errorf("send: %w", err)
		}
	}
	if err := st.CloseSend(); err != nil {
		return nil, err
	}
	ack := new(Ack)
	if err := st.RecvMsg(ack); err != nil {
		return nil, err
	}
	return ack, nil
}
