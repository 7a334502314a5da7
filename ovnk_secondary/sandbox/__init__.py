"""The OVN sandbox: real OVN/OVS in containers (cluster), its images, and its command line."""
