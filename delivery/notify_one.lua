
return notify(KEYS, ARGV)
