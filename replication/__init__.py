"""Change-data replication from a primary site's database to a standby's (issue 3)."""
