//go:build race

package typed

// raceEnabled: the race detector's sync.Pool drops a quarter of what is
// put back, so allocation counts that rely on a pool do not hold.
const raceEnabled = true
