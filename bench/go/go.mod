module libsingleflight/bench/go

go 1.26.6

require (
	golang.org/x/sync v0.25.0
	resenje.org/singleflight v0.4.3
	tailscale.com v1.102.5
)
