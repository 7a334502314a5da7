"""The OVN northbound side of the controller: desired rows (pure), diffs (pure), ovsdbapp client."""
