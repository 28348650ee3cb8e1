"""kubenova's controller: checks references, schedules Servers onto Hypervisors, binds them."""
