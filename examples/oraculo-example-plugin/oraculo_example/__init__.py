"""An example Oráculo plugin: a feature with one route, an agent tool and a panel."""
