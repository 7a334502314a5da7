"""The controller: watches NADs and pods (informers), keeps OVN northbound equal to them."""
