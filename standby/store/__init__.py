"""The site's database: schema, migrations, engine set-up, reference data and the seed."""
