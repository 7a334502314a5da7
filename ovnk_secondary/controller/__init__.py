"""The controller: watches NADs and pods (kopf) and keeps OVN northbound equal to what they ask."""
