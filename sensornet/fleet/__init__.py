"""
The fleet view: many sensors at once. Series states from their cadence
(L{sensornet.fleet.states}), threshold and silence rules
(L{sensornet.fleet.rules}) and their webhook notifications
(L{sensornet.fleet.webhooks}). See docs/fleet.md.
"""
