"""The web moderation console (`monitor web`): a review queue in the browser, with accounts and an audit trail.

  users.py      accounts: the users file (0600, argon2id hashes), roles viewer < moderator < lead < admin
  sessions.py   sessions, CSRF tokens, login rate limits
  queue.py      the review queue: incidents from MQTT, claims, the two-person rule for permanent bans
  bridge.py     the broker side: incidents in, commands out (monitor/delivery/connection.py)
  actions.py    commands for the logged-in user, signed with the console's key; audit notes in the evidence log
  report.py     an incident as a CyberTipline-shaped report (JSON, XML), built on monitor/evidence/export.py
  server.py     the aiohttp application: login, server-sent events, the guard (session, CSRF, origin)
  incidents.py  the incident routes: view, image, claim, actions, approvals, report, audit
  static/       the page (HTML, CSS, vanilla JS; no build step)
"""
