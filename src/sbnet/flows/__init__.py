"""The flow language: fields, matches, actions and pipelines in ovs-ofctl syntax."""
