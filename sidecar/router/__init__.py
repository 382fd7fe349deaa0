"""The router (`kafka-mesh router`): copies topics from fronting clusters to consumer clusters by the mapping's router
rules. plan.py compiles the rules, pump.py moves one source cluster's records, service.py supervises."""
