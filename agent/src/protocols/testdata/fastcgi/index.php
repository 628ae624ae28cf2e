<?php
$p = $_SERVER['REQUEST_URI'];
if (strpos($p, '/missing') === 0) { http_response_code(404); echo "nope\n"; exit; }
if (strpos($p, '/fail') === 0) { header('Status: 503 Service Unavailable'); echo "down\n"; exit; }
if (strpos($p, '/big') === 0) { echo str_repeat("x", 20000); exit; }
if ($_SERVER['REQUEST_METHOD'] === 'POST') { echo "got " . strlen(file_get_contents('php://input')) . "\n"; exit; }
echo "hello " . $p . "\n";
