package sandbox

import "time"

// UsageReporter is implemented by processes whose runtime accounts the
// resources of the whole instance (the container runtime, through its
// cgroups): the daemon's metrics read it at each scrape.
type UsageReporter interface {
	// Usage reads what the instance uses now. It is cheap (a few small
	// files) and safe to call from any goroutine, also after the instance
	// ended (it then fails).
	Usage() (Usage, error)
}

// Usage is what one instance uses: all its processes together.
type Usage struct {
	// MemoryBytes is the memory charged to the instance (its cgroup's
	// memory.usage_in_bytes on cgroup v1, memory.current on v2): resident
	// memory and page cache.
	MemoryBytes uint64
	// CPU is the CPU time its processes used since it started, user and
	// system together.
	CPU time.Duration
}
