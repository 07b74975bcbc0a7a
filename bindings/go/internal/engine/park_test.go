package engine

import "testing"

// A destroy that the library runs inside sfgo_begin (marked nocallback from
// Go 1.22 on) must not call into Go: it is parked, and Go runs it right
// after the call, so the outcome is still released.
func TestDestroysInsideBeginAreParkedThenRun(t *testing.T) {
	before := loadLiveOutcomes()
	outcomes := make([]interface{}, 40) // more than the parking array's first size
	for i := range outcomes {
		outcomes[i] = &outcome[int]{val: i}
	}
	if parked := destroyAsInBegin(outcomes); parked != len(outcomes) {
		t.Fatalf("%d of %d destroys parked", parked, len(outcomes))
	}
	if live := loadLiveOutcomes(); live != before {
		t.Fatalf("%d outcomes still alive, want %d: a parked destroy never ran", live, before)
	}
}
