# Captures the fixtures of broker-adapters/tests/sidekiq_decoding.rs from a real Sidekiq
# process (Debian's ruby-sidekiq 6.4) on a private redis-server:
#   ruby tests/ruby/capture_sidekiq.rb broker-adapters/tests/fixtures/sidekiq
# Each fixture is a JSON file: {"key", "type", and "items" (list), "members" ([member, score],
# sorted set) or "fields" (hash)}, the values as Redis holds them.
require "json"
require "socket"
require "fileutils"
require "redis"

out = ARGV[0] || abort("usage: capture_sidekiq.rb OUT_DIR")
FileUtils.mkdir_p(out)
here = File.expand_path(__dir__)
port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
url = "redis://127.0.0.1:#{port}/0"
redis_pid = spawn("redis-server", "--port", port.to_s, "--save", "", "--appendonly", "no",
  out: File::NULL)
redis = Redis.new(url: url)
50.times { begin; redis.ping; break; rescue Redis::CannotConnectError; sleep 0.1; end }
ENV["REDIS_URL"] = url
worker = spawn("sidekiq", "-r", File.join(here, "app.rb"), "-q", "default", "-q", "critical",
  "-c", "5", out: File::NULL, err: File::NULL)

def wait_for(what, seconds = 30)
  deadline = Time.now + seconds
  until (v = yield)
    abort "capture: no #{what} within #{seconds}s" if Time.now > deadline
    sleep 0.05
  end
  v
end

def save(out, name, doc)
  File.write(File.join(out, "#{name}.json"), JSON.pretty_generate(doc) + "\n")
end

def dump(redis, key)
  case redis.type(key)
  when "list" then {"key" => key, "type" => "list", "items" => redis.lrange(key, 0, -1)}
  when "zset" then {"key" => key, "type" => "zset", "members" => redis.zrange(key, 0, -1, with_scores: true)}
  when "hash" then {"key" => key, "type" => "hash", "fields" => redis.hgetall(key)}
  when "set" then {"key" => key, "type" => "set", "members" => redis.smembers(key).sort}
  else {"key" => key, "type" => redis.type(key), "value" => redis.get(key)}
  end
end

begin
  produce = ->(*args) { `ruby #{File.join(here, "produce.rb")} #{args.join(" ")}`.split }
  identity = wait_for("process") { redis.smembers("processes").first }
  save(out, "process", dump(redis, identity))
  save(out, "processes", dump(redis, "processes"))

  # A slow job, in the work hash at the next heartbeat.
  slow = produce.call("add", 1, 8).first
  wait_for("slow job in the work hash", 15) { redis.hgetall("#{identity}:workers").values.any? { |v| v.include?(slow) } }
  save(out, "workers_running", dump(redis, "#{identity}:workers"))
  save(out, "process_busy", dump(redis, identity))

  # A failing job with retries left: the retry set, with a compressed backtrace.
  failing = produce.call("fail", "card-declined-3").first
  wait_for("retry entry") { redis.zrange("retry", 0, -1).any? { |m| m.include?(failing) } }
  save(out, "retry", dump(redis, "retry"))
  # Its second failure ends in dead; so does a retry: 0 job at once.
  noretry = produce.call("noretry", "no-second-chance").first
  wait_for("dead entries", 30) { d = redis.zrange("dead", 0, -1); d.any? { |m| m.include?(failing) } && d.any? { |m| m.include?(noretry) } }
  save(out, "dead", dump(redis, "dead"))

  # A scheduled job.
  produce.call("in", 600)
  save(out, "schedule", dump(redis, "schedule"))

  # Jobs waiting in a queue no process reads.
  produce.call("add", 2, 0, "parked")
  save(out, "queue_parked", dump(redis, "queue:parked"))
  save(out, "queues", dump(redis, "queues"))
  save(out, "manifest", {
    "sidekiq" => `ruby -e 'require "sidekiq"; print Sidekiq::VERSION'`,
    "redis" => redis.info["redis_version"],
    "identity" => identity,
    "jobs" => {"slow" => slow, "failing" => failing, "noretry" => noretry}
  })
ensure
  Process.kill("TERM", worker) rescue nil
  Process.wait(worker) rescue nil
  Process.kill("TERM", redis_pid) rescue nil
  Process.wait(redis_pid) rescue nil
end
