// Row 6 of bench/run.sh: the tutorial's stack as its users grow it. Express, jsonwebtoken checking
// the same HS256 token wxgate issues (Authorization: Bearer, pinned algorithm, aud = appid),
// and http-proxy-middleware forwarding to the origin with the caller's openid in X-WX-OpenID.
// One process. Environment: PORT, ORIGIN (http://127.0.0.1:PORT), JWT_SECRET, APPID, and
// JWT_KEYOBJECT=1 to pass the key as a KeyObject instead of the string the tutorial passes.
'use strict'

const crypto = require('crypto')
const http = require('http')
const express = require('express')
const jwt = require('jsonwebtoken')
const { createProxyMiddleware } = require('http-proxy-middleware')

const { PORT, ORIGIN, JWT_SECRET, APPID } = process.env
if (!PORT || !ORIGIN || !JWT_SECRET || !APPID) {
  console.error('app.js needs PORT, ORIGIN, JWT_SECRET and APPID in the environment')
  process.exit(2)
}

// With a string key, jsonwebtoken 9 first tries crypto.createPublicKey() on it for every token
// (about 0.4 ms here, the bulk of a request); a KeyObject skips that.
const key = process.env.JWT_KEYOBJECT === '1' ? crypto.createSecretKey(Buffer.from(JWT_SECRET)) : JWT_SECRET

const app = express()

app.use((req, res, next) => {
  const auth = req.headers.authorization || ''
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : req.headers.token
  if (!token) {
    return res.status(401).json({ code: '10119', message: 'token必须传递' })
  }
  let claims
  try {
    claims = jwt.verify(token, key, { algorithms: ['HS256'], audience: APPID, issuer: 'wxgate' })
  } catch (err) {
    return res.status(401).json({ code: '10200', message: 'token已过期' })
  }
  for (const name of Object.keys(req.headers)) {
    if (name.startsWith('x-wx-')) delete req.headers[name]
  }
  req.headers['x-wx-openid'] = claims.sub
  next()
})

// Without an agent, http-proxy sends `Connection: close` and opens a connection per request;
// a keep-alive pool is what a tuned deployment uses, so Node gets its best case here.
app.use(createProxyMiddleware({
  target: ORIGIN,
  agent: new http.Agent({ keepAlive: true, maxSockets: 512 })
}))

app.listen(Number(PORT), '127.0.0.1', () => {
  console.log(`node gateway listening on http://127.0.0.1:${PORT}`)
})
