"""The ofproto side of the reference switch: the bridge's ports, OpenFlow tables, translation and revalidation."""
