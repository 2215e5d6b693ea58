-- Add to prosody.cfg.lua (after the VirtualHost blocks), then `prosodyctl reload`.
-- The name must be the gateway's component.jid; the secret its component.secret.
-- Prosody listens for components on 127.0.0.1:5347 (component_ports / component_interfaces).
Component "gateway.example.com"
    component_secret = "change-me"
    -- Contacts in the roster (XEP-0356, optional): with mod_privilege (Debian package
    -- prosody-modules), also add "privilege" to the global modules_enabled and, in each
    -- VirtualHost whose users use the gateway:
    --     privileged_entities = { ["gateway.example.com"] = { roster = "both"; message = "outgoing"; } }
    -- Without it, each new contact sends the user a subscription request instead.
    modules_enabled = { "privilege" }

-- Mail attachments: where the users' VirtualHost has an upload service (XEP-0363, e.g.
-- Component "upload.example.com" "http_file_share"), the gateway finds it in the host's
-- disco#items, uploads each attachment as gateway.example.com and sends the link. With
-- http_file_share_access set, add "gateway.example.com" to it. All users' attachments
-- count against the gateway's one daily quota: raise http_file_share_daily_quota to suit.
