/**
 * The tests' private RabbitMQ vhost: the production module broker/vhost.ts (the benchmarks use
 * it too), under the names the tests import.
 */
export { privateAmqpUrl as testAmqpUrl, privateVhost as testVhost } from '../../broker/vhost.ts';
