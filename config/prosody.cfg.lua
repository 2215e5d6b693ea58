-- Add to prosody.cfg.lua (after the VirtualHost blocks), then `prosodyctl reload`.
-- The name must be the gateway's component.jid; the secret its component.secret.
-- Prosody listens for components on 127.0.0.1:5347 (component_ports / component_interfaces).
Component "gateway.example.com"
    component_secret = "change-me"
