module github.com/dimplugd/dimplugd/sdk-go

go 1.25

require (
	aead.dev/minisign v0.3.0
	capnproto.org/go/capnp/v3 v3.1.0-alpha.2
	github.com/BurntSushi/toml v1.6.0
	github.com/klauspost/compress v1.17.11
	golang.org/x/sys v0.25.0
)

require (
	github.com/colega/zeropool v0.0.0-20230505084239-6fb4a4f75381 // indirect
	golang.org/x/crypto v0.13.0 // indirect
	golang.org/x/sync v0.7.0 // indirect
)
